"""Hyperparameter search, then the pipeline for its best candidate (PROTOTYPE: entry plumbing to
be reworked into the pipeline's).

Keras Tuner's oracle (random, bayesian, hyperband) proposes trials in this process; each trial is
a Prefect task on a Dask cluster (MNIST_DASK_ADDRESS, else a LocalCluster sized to the machine),
trained on the training split and scored on the validation split. The best configuration is
then trained on the full training split and goes through the pipeline's evaluate, plots, gate,
report, store and promote: the test set is touched once, by that candidate.

`python flows/tune_flow.py --help`. Exit status as train_flow.py: 0 promoted, 3 blocked by the
gate, 2 bad parameter or setting, 1 failed (including "every trial failed").
"""

# No `from __future__ import annotations`: Prefect builds the parameter model from these annotations.
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import re
import sys
import tempfile
import time
from functools import partial
from typing import Annotated, Literal, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.context import FlowRunContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mnist_pipeline.ephemeral_server import ephemeral_server
from mnist_pipeline.errors import ConfigError, PipelineError
from mnist_pipeline.params import (AllowRegression, MaxRegression, MinAccuracy, ModelKind, Seed,
                                   TrainParams, ValidationSize)
from mnist_pipeline.search_space import ALGORITHMS
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks.fetch import fetch_task
from tasks.normalize import normalize_task
from tasks.tune import (DataSource, best_record, dask_wait_any, drive_search, make_oracle, one_line,
                        render_search_report, search_summary, store_trial_record, table_rows,
                        train_candidate, trial_epochs, trial_task, warm_worker)
from tasks.validate import validate_task

EXIT_PROMOTED, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3
DASK_ADDRESS_ENV = "MNIST_DASK_ADDRESS"

Trials = Annotated[int, Field(ge=1, le=1000, description="Trials to run (Hyperband: at most this many).")]
MaxParallel = Annotated[Optional[int], Field(
    ge=1, le=256, description="Trials in flight at once. Empty: one per Dask worker thread.")]
TrialEpochs = Annotated[int, Field(ge=1, le=500, description="Epochs per trial (Hyperband: the most any trial gets); the best candidate is trained as long as its trial.")]
Algorithm = Annotated[Literal["random", "bayesian", "hyperband"], Field(
    description="Keras Tuner's search algorithm: random, bayesian (Gaussian process) or hyperband.")]
TrainLimit = Annotated[Optional[int], Field(
    ge=100, le=55000, description="Trials train on the first N training images only (quick tests, benchmarks). Empty: all.")]


class TuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelKind = "mlp"
    trials: Trials = 8
    max_parallel: MaxParallel = None
    epochs: TrialEpochs = 3
    algorithm: Algorithm = "random"
    min_accuracy: MinAccuracy = None
    max_regression: MaxRegression = 0.005
    allow_regression: AllowRegression = False
    validation_size: ValidationSize = 5000
    seed: Seed = 42
    train_limit: TrainLimit = None


def parse_tune_params(**values) -> TuneParams:
    try:
        return TuneParams(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "parameters"
        raise ConfigError(f"parameter {name}={err.get('input')!r} is invalid: {err['msg']}") from None


def dask_address() -> Optional[str]:
    """MNIST_DASK_ADDRESS (tcp://host:port), or None for a LocalCluster."""
    value = os.environ.get(DASK_ADDRESS_ENV, "").strip()
    if value and not re.fullmatch(r"(tcp|tls)://[^/:\s]+:\d{1,5}", value):
        raise ConfigError(f"{DASK_ADDRESS_ENV}={value!r} is invalid: expected tcp://host:port "
                          "(a Dask scheduler), or unset it for a local cluster")
    return value or None


def dask_task_runner(address: Optional[str], max_parallel: Optional[int]):
    """An existing cluster, or a LocalCluster of single-threaded worker processes: one per core
    (fewer if max_parallel says so). Processes, not threads: TensorFlow and the GIL."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    cores = os.cpu_count() or 1
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": min(max_parallel or cores, cores), "threads_per_worker": 1,
        "processes": True, "dashboard_address": ":0"})


def cnn_threads_per_trial(address: Optional[str], n_workers: int) -> Optional[int]:
    """Cores per worker on a LocalCluster (all workers share this machine); on an external
    cluster TensorFlow's default."""
    return None if address else max(1, (os.cpu_count() or 1) // max(1, n_workers))


def run_search(p: TuneParams, store, run_id: str, source: DataSource, log) -> tuple[list, dict]:
    address = dask_address()
    import dask

    with dask_task_runner(address, p.max_parallel) as runner:
        # A LocalCluster's workers take this process's Dask config: no statistical profiler
        # sampling their stacks every 10 ms while trials compete for the cores.
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            client = runner.client
        if address:
            client.wait_for_workers(1, timeout=120)
        workers = sorted(client.nthreads())
        parallel = p.max_parallel or max(1, sum(client.nthreads().values()))
        threads = cnn_threads_per_trial(address, len(workers))
        t0 = time.perf_counter()
        # Every worker imports TensorFlow and loads the data at once, before the first trial.
        # A failure here is not fatal: each trial loads for itself, and records what failed.
        try:
            warm = client.run(warm_worker, source, p.model, threads, on_error="return")
        except Exception as exc:
            warm = {"all": exc}
        warmup_seconds = round(time.perf_counter() - t0, 3)
        cold = {w: one_line(r) for w, r in warm.items() if isinstance(r, BaseException)}
        if cold:
            log.warning("worker warm-up failed (trials will retry it): %s", cold)
        log.info("search: %s over the %s space, %d trials, %d in flight, %d epochs each; Dask %s, "
                 "workers %s (warmed up in %.1f s)", p.algorithm, p.model, p.trials, parallel,
                 p.epochs, address or "LocalCluster", ", ".join(workers), warmup_seconds)
        with tempfile.TemporaryDirectory(prefix="mnist-tune-") as oracle_dir:
            oracle = make_oracle(p.algorithm, p.model, p.trials, p.epochs, p.seed, oracle_dir)
            started = time.perf_counter()  # after the oracle's import of Keras Tuner (2-3 s)

            def launch(trial_id: str, hp_values: dict):
                return runner.submit(trial_task, parameters={
                    "trial_id": trial_id, "hp_values": hp_values, "model_kind": p.model,
                    "epochs": p.epochs, "seed": p.seed, "data_source": source, "threads": threads})

            def on_record(record: dict) -> None:
                store_trial_record(store, run_id, record)
                score = "%.4f" % record["val_accuracy"] if record["val_accuracy"] is not None else "-"
                rerun = (f", rerun after {record['earlier_starts']} start(s) on a lost worker"
                         if record.get("earlier_starts") else "")
                log.info("trial %s %s: val_accuracy %s, %s s on %s%s%s", record["trial_id"],
                         record["status"], score, record["seconds"], record["worker"], rerun,
                         f" ({record['error']})" if record["error"] else "")

            records = drive_search(oracle, launch, partial(dask_wait_any, log=log), max_parallel=parallel,
                                   max_trials=p.trials, on_record=on_record)
            seconds = time.perf_counter() - started  # the search, not the cluster's shutdown
    best = None
    try:
        best = best_record(records)
    finally:
        summary = search_summary(algorithm=p.algorithm, model=p.model, trials=p.trials,
                                 max_parallel=parallel, epochs=p.epochs, seed=p.seed,
                                 cluster=address or "LocalCluster", workers=workers, seconds=seconds,
                                 records=records, best=best, warmup_seconds=warmup_seconds)
        publish_search(store, run_id, summary, records)
    return records, summary


def publish_search(store, run_id: str, summary: dict, records: list) -> None:
    """The search's summary and report in the store, and the trials table in the Prefect UI."""
    import json

    store.put(f"runs/{run_id}/tuning/search.json",
              json.dumps({**summary, "trials": records}, indent=1).encode(), "application/json")
    report_key = f"runs/{run_id}/tuning/report.html"
    store.put(report_key, render_search_report(run_id, summary, records).encode(), "text/html")
    rows = table_rows(records, summary["model"])
    if rows:
        create_table_artifact(rows, key="mnist-tuning-trials",
                              description=f"{summary['trials_completed']}/{summary['trials_run']} trials "
                                          f"completed ({summary['algorithm']}, {summary['model']})")
    create_link_artifact(store.link(report_key), link_text="tuning report", key="mnist-tuning-report")


@flow(name="mnist-tuning", retries=0, validate_parameters=True,
      description="Hyperparameter search with Keras Tuner, trials as tasks on Dask; the best "
                  "candidate then goes through the training pipeline's evaluation and gate.")
def tune_flow(
    model: ModelKind = "mlp",
    trials: Trials = 8,
    max_parallel: MaxParallel = None,
    epochs: TrialEpochs = 3,
    algorithm: Algorithm = "random",
    min_accuracy: MinAccuracy = None,
    max_regression: MaxRegression = 0.005,
    allow_regression: AllowRegression = False,
    validation_size: ValidationSize = 5000,
    seed: Seed = 42,
    train_limit: TrainLimit = None,
):
    from flows.train_flow import run_pipeline  # the pipeline from fetch to promote, unchanged

    p = TuneParams(model=model, trials=trials, max_parallel=max_parallel, epochs=epochs,
                   algorithm=algorithm, min_accuracy=min_accuracy, max_regression=max_regression,
                   allow_regression=allow_regression, validation_size=validation_size, seed=seed,
                   train_limit=train_limit)
    log = get_run_logger()
    run_id = str(FlowRunContext.get().flow_run.id)
    settings = load_settings()
    store = open_store(settings)
    # Fetched here first: the workers then read the verified cache from the store, not the mirrors.
    raw = fetch_task(store, settings.mirrors)
    source = DataSource(store.url, settings.mirrors, p.validation_size, p.seed, p.train_limit)
    records, summary = run_search(p, store, run_id, source, log)
    best = summary["best"]
    log.info("best: trial %s, val_accuracy %.4f, %s", best["trial_id"], best["val_accuracy"],
             best["hyperparameters"])

    # The candidate: the best configuration on the full training split, stored where the train
    # stage looks for an earlier attempt's model, so run_pipeline evaluates and gates it.
    # PROTOTYPE: the lead replaces this with a train stage that takes the hyperparameters.
    arrays, _ = validate_task(raw)
    splits = normalize_task(arrays, p.validation_size, p.seed)
    del raw, arrays
    epochs_final = trial_epochs(best.get("hyperband") or {}, p.epochs)
    train_candidate(splits, p.model, best["hyperparameters"], epochs_final, p.seed, store, run_id)
    del splits
    params = TrainParams(epochs=epochs_final, batch_size=int(best["hyperparameters"]["batch_size"]),
                         model=p.model, min_accuracy=p.min_accuracy, max_regression=p.max_regression,
                         allow_regression=p.allow_regression, validation_size=p.validation_size,
                         seed=p.seed, learning_rate=float(best["hyperparameters"]["learning_rate"]))
    return run_pipeline(params)


def build_parser() -> argparse.ArgumentParser:
    d = TuneParams()
    p = argparse.ArgumentParser(description="Search hyperparameters, then train, gate and maybe "
                                            "promote the best candidate.",
                                epilog="Exit status: 0 promoted, 3 blocked by the gate, other: failed.")
    p.add_argument("--model", default=d.model, help="mlp or cnn")
    p.add_argument("--trials", type=int, default=d.trials)
    p.add_argument("--max-parallel", type=int, default=None,
                   help="trials in flight (default: one per Dask worker thread)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial (hyperband: at most)")
    p.add_argument("--algorithm", default=d.algorithm, help=", ".join(ALGORITHMS))
    p.add_argument("--min-accuracy", type=float, default=None)
    p.add_argument("--max-regression", type=float, default=d.max_regression)
    p.add_argument("--allow-regression", action="store_true")
    p.add_argument("--validation-size", type=int, default=d.validation_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-limit", type=int, default=None,
                   help="trials use the first N training images (tests, benchmarks)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        load_settings()
        dask_address()
        params = parse_tune_params(**args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ephemeral_server() as server:
        try:
            if server:
                server.wait_ready()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        state = tune_flow(**params.model_dump(), return_state=True)
    if state.is_completed():
        summary = state.result()
        print(f"run {summary['run_id']}: test accuracy {summary['test_accuracy']:.4f}; "
              f"{'promoted to production' if summary['promoted'] else summary['reason']}; "
              f"tuning report: {summary['store']}/runs/{summary['run_id']}/tuning/report.html")
        return EXIT_PROMOTED if summary["promoted"] else EXIT_BLOCKED
    exc = state.result(raise_on_failure=False)
    detail = str(exc) if isinstance(exc, PipelineError) else (state.message or "unknown error")
    print(f"error: run failed: {detail}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
