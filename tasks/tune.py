"""tune: hyperparameter search. Keras Tuner's oracle proposes trials in the flow process; each
trial is a Prefect task that trains on the training split and is scored on the validation split,
wherever the task runner sends it (Dask workers). The test set is never loaded for a trial.

Trial side (runs on a worker): `run_trial` (pure) and `trial_task` (its thin Prefect task).
Flow side: `make_oracle`, `drive_search` (keeps up to K trials in flight), `dask_wait_any`,
`best_record`, the trial records and the report; the winner is trained by the pipeline's own train stage.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.errors import PermanentError
from mnist_pipeline.search_space import (ALGORITHMS, OBJECTIVE, default_values,
                                         dimensions_for, hyperparameters_for, space_table)

COMPLETED, FAILED = "COMPLETED", "FAILED"
# Keys Hyperband adds to a trial's values (its successive-halving bookkeeping), not model settings.
HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


class SearchFailed(PermanentError):
    """No trial completed: nothing to promote."""


# ---------------------------------------------------------------------------------------------
# Trial side: what a Dask worker runs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSource:
    """Where a worker gets MNIST, and which split: small, so it travels with every trial instead
    of the arrays. Credentials are not in it: a worker reads AWS_* from its own environment."""

    store_url: str
    mirrors: tuple[str, ...]
    validation_size: int = 5000
    seed: int = 42  # the split's seed: the same as the final run's, so validation is the same images
    train_limit: int | None = None  # first N training images (tests, benchmarks); None = all


@dataclass(frozen=True)
class TrialData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


# One dataset per worker process, loaded at its first trial: 190 MB is not shipped per trial.
_DATA_CACHE: dict[tuple, TrialData] = {}


def load_trial_data(source: DataSource) -> TrialData:
    """The training and validation splits, from the store cache (else the mirrors) through the
    pipeline's own fetch, validate and normalize; the test split is dropped at once."""
    key = (source.store_url, source.mirrors, source.validation_size, source.seed)
    data = _DATA_CACHE.get(key)
    if data is None:
        from mnist_pipeline.settings import load_settings
        from mnist_pipeline.store import open_store
        from tasks.fetch import fetch_mnist
        from tasks.normalize import normalize_and_split
        from tasks.validate import validate_mnist

        settings = load_settings(store_url=source.store_url, mirrors=source.mirrors)
        arrays, _ = validate_mnist(fetch_mnist(open_store(settings), settings.mirrors))
        splits = normalize_and_split(arrays, source.validation_size, source.seed)
        data = TrialData(splits.x_train, splits.y_train, splits.x_val, splits.y_val)
        _DATA_CACHE.clear()  # a worker keeps one dataset, not one per search it ever served
        _DATA_CACHE[key] = data
    if source.train_limit:
        n = source.train_limit
        data = TrialData(data.x_train[:n], data.y_train[:n], data.x_val, data.y_val)
    return data


def warm_worker(data_source: DataSource, model_kind: str, threads: int | None = None) -> float:
    """Import TensorFlow, set its threads and load the data, before any trial: run on every
    worker at once (client.run) so that the first trials do not each pay for it. Seconds taken."""
    started = time.perf_counter()
    load_trial_data(data_source)
    set_trial_threads(model_kind, threads)
    import keras  # noqa: F401

    return round(time.perf_counter() - started, 3)


def current_worker() -> str:
    """The Dask worker running this code ("tcp://host:port"), or "local" outside Dask."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def build_tuned_model(kind: str, hp_values: dict, total_steps: int = 1):
    """The model for one point of the search space: tasks/train.py's build_model with these
    hyperparameters (with default_values(kind) it is the shipped model, layer for layer)."""
    from tasks.train import build_model

    v = {**default_values(kind), **{k: hp_values[k] for k in hp_values if k not in HYPERBAND_KEYS}}
    return build_model(kind, float(v["learning_rate"]), total_steps, v)


def set_trial_threads(kind: str, threads: int | None) -> None:
    """One TensorFlow intra-op thread for the MLP (its matrices are too small to split; that is
    also what lets two workers on two cores run two trials at full speed). The CNN gets
    `threads` (the flow passes cores per worker), else TensorFlow's default. TensorFlow fixes
    this at its first op, so a worker keeps the setting of its first trial."""
    import tensorflow as tf

    wanted = 1 if kind == "mlp" else (threads or 0)
    try:
        if tf.config.threading.get_intra_op_parallelism_threads() != wanted:
            tf.config.threading.set_intra_op_parallelism_threads(wanted)
        # The inter-op pool too: by default one thread per core runs independent ops of the
        # training step side by side, and each worker then takes more than its core.
        if tf.config.threading.get_inter_op_parallelism_threads() != wanted:
            tf.config.threading.set_inter_op_parallelism_threads(wanted)
    except RuntimeError:
        pass  # TensorFlow already ran in this process: a speed setting, not the maths


def validation_accuracy(model, data: TrialData) -> float:
    from tasks.evaluate import predict_probabilities

    probs = predict_probabilities(model, data.x_val)
    if not np.isfinite(probs).all():
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == data.y_val))


def trial_epochs(hp_values: dict, epochs: int) -> int:
    """Hyperband sets each trial's budget in "tuner/epochs"; the other algorithms use `epochs`.
    A Hyperband trial that continues another one ("tuner/trial_id") is trained from scratch to
    its budget: no checkpoint has to travel between workers, at the cost of the epochs redone."""
    return int(hp_values.get("tuner/epochs", epochs))


def one_line(exc: BaseException) -> str:
    try:
        text = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ fails still names its type
        text = []
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_trial(hp_values: dict, model_kind: str, epochs: int, seed: int, data_source: DataSource,
              threads: int | None = None) -> dict:
    """Train one configuration on the training split and score it on the validation split.

    Never raises for a bad trial: a diverged training or any error is returned as status FAILED
    with a one-line reason, so the search records it and goes on."""
    started = time.perf_counter()
    record = {"hyperparameters": dict(hp_values), "val_accuracy": None, "status": FAILED,
              "error": None, "worker": current_worker(), "pid": os.getpid(),
              "epochs": trial_epochs(hp_values, epochs), "seconds": None}
    try:
        data = load_trial_data(data_source)
        import keras

        keras.backend.clear_session()  # a long-lived worker must not accumulate earlier trials' graphs
        set_trial_threads(model_kind, threads)
        keras.utils.set_random_seed(seed)
        batch_size = int(hp_values.get("batch_size", default_values(model_kind)["batch_size"]))
        steps = record["epochs"] * math.ceil(len(data.x_train) / batch_size)
        model = build_tuned_model(model_kind, hp_values, steps)
        from mnist_pipeline.tensors import as_tensor
        from tasks.train import shipped_model, training_targets

        fit = model.fit(as_tensor(data.x_train), training_targets(model, data.y_train), epochs=record["epochs"],
                        batch_size=batch_size, shuffle=True, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
        model = shipped_model(model)
        losses = [float(x) for x in fit.history.get("loss", [])]
        if len(losses) < record["epochs"] or not all(math.isfinite(x) for x in losses):
            record["error"] = (f"training diverged: loss became NaN/inf at epoch {len(losses)} "
                               f"(learning_rate={hp_values.get('learning_rate')})")
        else:
            accuracy = validation_accuracy(model, data)
            if math.isfinite(accuracy):
                record.update(val_accuracy=accuracy, status=COMPLETED)
            else:
                record["error"] = "the model's validation outputs are NaN/inf"
    except Exception as exc:  # one bad trial must not end the search; the reason is recorded
        record["error"] = one_line(exc)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def earlier_starts() -> int | None:
    """How many times this task run started before, on a worker that was lost: Dask reruns the
    task with the same Prefect task run id, so its state history shows one Running per start.
    Best effort (None when the API cannot say): it only annotates the record."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        now = ctx.task_run.state.timestamp
        with get_client(sync_client=True) as client:
            states = client.read_task_run_states(ctx.task_run.id)
        return sum(1 for s in states if s.type.value == "RUNNING" and s.timestamp < now)
    except Exception:
        return None


@task(name="tune-trial", retries=0, cache_policy=NO_CACHE, task_run_name="trial {trial_id}")
def trial_task(trial_id: str, hp_values: dict, model_kind: str, epochs: int, seed: int,
               data_source: DataSource, threads: int | None = None) -> dict:
    """No retries: a failed trial is a result to record. A lost worker is Dask's business (it
    reruns the task on another worker, under the same task run id)."""
    return {"trial_id": trial_id, "earlier_starts": earlier_starts(),
            **run_trial(hp_values, model_kind, epochs, seed, data_source, threads)}


# ---------------------------------------------------------------------------------------------
# Flow side: the oracle and the search loop
# ---------------------------------------------------------------------------------------------

def make_oracle(algorithm: str, model_kind: str, trials: int, epochs: int, seed: int,
                directory: str | None = None):
    """A Keras Tuner oracle over this kind's space, maximising val_accuracy, driven from outside
    (create_trial / update_trial / end_trial). It writes its state (oracle.json, one
    trial.json per trial) under `directory`/search: a temporary folder by default."""
    import keras_tuner as kt

    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    common = dict(objective=kt.Objective(OBJECTIVE, "max"), hyperparameters=hyperparameters_for(model_kind),
                  allow_new_entries=False, tune_new_entries=False, seed=seed,
                  # A failed trial is not retried (it would fail the same way), and failures in a
                  # row must not stop the search: the caller decides when nothing worked.
                  max_retries_per_trial=0, max_consecutive_failed_trials=10**9)
    if algorithm == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=trials, **common)
    elif algorithm == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise PermanentError("the bayesian algorithm needs scipy and scikit-learn "
                                 "(pip install 'keras-tuner[bayesian]'); or use random or hyperband") from None
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=trials, **common)
    else:
        # Brackets of trials trained for 1..`epochs` epochs, the best of each round trained
        # longer; the search stops after `trials` trials (drive_search's max_trials).
        # hyperband_iterations=None: as many iterations as `trials` allows, rather than stopping
        # after one (with epochs=3 one iteration is only 6 trials).
        oracle = kt.oracles.HyperbandOracle(max_epochs=max(epochs, 1), factor=3,
                                            hyperband_iterations=None, **common)
    oracle.verbose = 0  # Keras Tuner prints (and clears the screen); the flow logs instead
    oracle._set_project_dir(directory or tempfile.mkdtemp(prefix="mnist-tune-"), "search")
    return oracle


def finish_trial(oracle, trial, outcome: dict) -> dict:
    """Report a trial's outcome to the oracle (the objective on success, FAILED with its reason
    otherwise) and return the trial's record."""
    from keras_tuner.engine.trial import TrialStatus

    completed = outcome.get("status") == COMPLETED and outcome.get("val_accuracy") is not None
    if completed:
        oracle.update_trial(trial.trial_id, {OBJECTIVE: float(outcome["val_accuracy"])})
    trial.status = TrialStatus.COMPLETED if completed else TrialStatus.FAILED
    trial.message = outcome.get("error")
    oracle.end_trial(trial)
    values = dict(trial.hyperparameters.values)
    return {
        "trial_id": trial.trial_id,
        "status": COMPLETED if completed else FAILED,
        "val_accuracy": float(outcome["val_accuracy"]) if completed else None,
        "seconds": outcome.get("seconds"),
        "worker": outcome.get("worker"),
        "epochs": outcome.get("epochs"),
        "hyperparameters": {k: v for k, v in values.items() if k not in HYPERBAND_KEYS},
        "hyperband": {k: values[k] for k in HYPERBAND_KEYS if k in values} or None,
        "error": None if completed else (outcome.get("error") or "failed without a reason"),
        # > 0: the trial was started on a worker that was lost, and rerun (on `worker`)
        "earlier_starts": outcome.get("earlier_starts"),
    }


def failed_outcome(exc: BaseException) -> dict:
    """The outcome of a trial whose task did not return: its worker was lost (Dask gave up
    rerunning it), the task crashed, or the cluster went away."""
    name = type(exc).__name__
    if name == "KilledWorker":
        error = f"worker lost while running the trial, and its reruns too ({one_line(exc)})"
    else:
        error = f"the trial task did not return: {one_line(exc)}"
    return {"status": FAILED, "error": error, "worker": "lost" if name == "KilledWorker" else None}


def drive_search(oracle, launch: Callable[[str, dict], object],
                 wait_any: Callable[[dict], Iterable[tuple[str, dict]]], *, max_parallel: int,
                 max_trials: int, on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the search: keep up to `max_parallel` trials in flight, each from
    oracle.create_trial with its own tuner id (a slot: "worker-0".."worker-K-1"; the oracle
    hands a busy tuner id its running trial again), and ask for the next trial as soon as one
    ends, so the oracle proposes with every result known so far.

    launch(trial_id, hp_values) -> a future; wait_any({trial_id: future}) -> (trial_id, outcome)
    pairs for the futures that are done (at least one); an outcome with "abort_search" ends the
    search once the trials in flight are in. Returns the records in end order."""
    from keras_tuner.engine.trial import TrialStatus

    in_flight: dict[str, tuple] = {}  # trial_id -> (slot, trial, future, submitted at)
    free_slots = list(range(max_parallel - 1, -1, -1))
    records: list[dict] = []
    launched, exhausted = 0, False
    while True:
        while not exhausted and free_slots and launched < max_trials:
            trial = oracle.create_trial(f"worker-{free_slots[-1]}")
            if trial.status == TrialStatus.STOPPED:
                exhausted = True  # space exhausted or the algorithm's budget is spent
            if trial.status != TrialStatus.RUNNING:
                break  # IDLE: Hyperband waits for running trials before its next round
            slot = free_slots.pop()
            in_flight[trial.trial_id] = (slot, trial, launch(trial.trial_id, dict(trial.hyperparameters.values)),
                                         time.perf_counter())
            launched += 1
        if not in_flight:
            return records
        for trial_id, outcome in wait_any({tid: fut for tid, (_, _, fut, _) in in_flight.items()}):
            slot, trial, _, submitted = in_flight.pop(trial_id)
            free_slots.append(slot)
            if outcome.get("abort_search"):
                exhausted = True  # e.g. no worker left: launching more would only wait again
            record = finish_trial(oracle, trial, outcome)
            # From submission to result: `seconds` plus Prefect's and Dask's overhead (and any rerun).
            record["wall_seconds"] = round(time.perf_counter() - submitted, 3)
            records.append(record)
            if on_record:
                on_record(record)


def dask_wait_any(futures: dict, poll_s: float = 2.0, no_worker_timeout_s: float = 120.0,
                  log=None) -> list[tuple[str, dict]]:
    """wait_any for PrefectDaskFutures: the trials that are done, and their outcomes.

    A worker killed mid-trial is Dask's to handle: the scheduler reruns the task on another
    worker (up to distributed.scheduler.allowed-failures times, then KilledWorker, recorded
    as a failed trial). With no worker at all the tasks would wait forever: after
    `no_worker_timeout_s` without one, the trials in flight are recorded as failed."""
    import distributed

    by_dask = {f.wrapped_future: tid for tid, f in futures.items()}
    client = next(iter(by_dask)).client
    no_workers_since = None
    while True:
        try:
            with client.as_current():  # the runner's client is not the process's default one
                done, _ = distributed.wait(list(by_dask), timeout=poll_s, return_when="FIRST_COMPLETED")
        except (TimeoutError, distributed.TimeoutError):
            done = set()
        if done:
            return [(by_dask[d], outcome_of(futures[by_dask[d]])) for d in done]
        if client.nthreads():
            no_workers_since = None
            continue
        no_workers_since = no_workers_since or time.monotonic()
        waited = time.monotonic() - no_workers_since
        if log and waited < poll_s * 1.5:
            log.warning("the Dask cluster has no worker; trials wait for one (%d s at most)",
                        no_worker_timeout_s)
        if waited >= no_worker_timeout_s:
            for f in by_dask:
                f.cancel()
            error = f"no Dask worker for {no_worker_timeout_s:.0f} s; start workers for the scheduler"
            return [(tid, {"status": FAILED, "error": error, "abort_search": True}) for tid in futures]


def outcome_of(future) -> dict:
    try:
        result = future.result()
    except Exception as exc:
        return failed_outcome(exc)
    if not isinstance(result, dict):
        return {"status": FAILED, "error": f"the trial task returned {type(result).__name__}, not a record"}
    return result


def best_record(records: list[dict]) -> dict:
    """The completed trial with the highest validation accuracy (ties: the earliest); a one-line
    SearchFailed when none completed."""
    done = [r for r in records if r["status"] == COMPLETED]
    if not done:
        first = next((r["error"] for r in records if r.get("error")), "no trial ran")
        raise SearchFailed(f"all {len(records)} trials failed (first: {first}); nothing to promote; "
                           "see the trial records, fix the cause and rerun")
    return max(done, key=lambda r: (r["val_accuracy"], -records.index(r)))


# ---------------------------------------------------------------------------------------------
# Records and report
# ---------------------------------------------------------------------------------------------

def trial_key(run_id: str, trial_id: str) -> str:
    return f"runs/{run_id}/tuning/trials/{trial_id}.json"


def store_trial_record(store, run_id: str, record: dict) -> str:
    key = trial_key(run_id, record["trial_id"])
    store.put(key, json.dumps(record, indent=1, sort_keys=True).encode(), "application/json")
    return key


def table_rows(records: list[dict], model_kind: str) -> list[dict]:
    """One row per trial for the Prefect table artifact and the report."""
    names = [d.name for d in dimensions_for(model_kind)]
    rows = []
    for r in sorted(records, key=lambda r: r["trial_id"]):
        row = {"trial": r["trial_id"], "status": r["status"],
               "val_accuracy": None if r["val_accuracy"] is None else round(r["val_accuracy"], 4),
               "seconds": r["seconds"], "epochs": r.get("epochs"), "worker": r["worker"]}
        row.update({n: _fmt(r["hyperparameters"].get(n)) for n in names})
        row["error"] = r["error"] or ""
        rows.append(row)
    return rows


def _fmt(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def score_plots(records: list[dict], model_kind: str) -> bytes:
    """Validation accuracy against each hyperparameter, one panel each; failed trials as red
    crosses on the floor of the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = dimensions_for(model_kind)
    cols = min(3, len(dims))
    rows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    done = [r for r in records if r["status"] == COMPLETED]
    failed = [r for r in records if r["status"] != COMPLETED]
    floor = min((r["val_accuracy"] for r in done), default=0.0)
    for ax, d in zip(axes.ravel(), dims):
        ax.scatter([r["hyperparameters"].get(d.name) for r in done], [r["val_accuracy"] for r in done],
                   color="tab:blue", label="completed")
        if failed:
            ax.scatter([r["hyperparameters"].get(d.name) for r in failed], [floor] * len(failed),
                       marker="x", color="tab:red", label="failed")
        # The whole declared range on the axis: it shows which part of the space was tried.
        if d.kind == "choice" and min(d.values) > 0:  # powers of two: a log axis spaces them evenly
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(d.values), [str(v) for v in d.values])
            ax.set_xlim(min(d.values) / 1.3, max(d.values) * 1.3)
        elif d.kind == "choice":  # counts from 0 (pixels of shift): a linear axis
            ax.set_xticks(list(d.values), [str(v) for v in d.values])
            ax.set_xlim(min(d.values) - 0.5, max(d.values) + 0.5)
        else:
            if d.log:
                ax.set_xscale("log")
            pad = 0 if d.log else (d.high - d.low) * 0.05
            ax.set_xlim(d.low * (0.8 if d.log else 1) - pad, d.high * (1.25 if d.log else 1) + pad)
        ax.set(xlabel=d.name, ylabel="validation accuracy")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(dims):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_search_report(run_id: str, summary: dict, records: list[dict]) -> str:
    """A self-contained HTML page: the search settings, the trials table, score against each
    hyperparameter, and the search space."""
    kind = summary["model"]
    esc = html.escape

    def table(rows: list[dict]) -> str:
        if not rows:
            return "<p>none</p>"
        head = "".join(f"<th>{esc(str(k))}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{esc('' if v is None else str(v))}</td>" for v in row.values())
                       + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    best = summary.get("best")
    best_line = (f"best: trial {esc(best['trial_id'])}, validation accuracy {best['val_accuracy']:.4f}"
                 if best else "no trial completed")
    png = base64.b64encode(score_plots(records, kind)).decode()
    settings = {k: v for k, v in summary.items() if k not in ("best", "space")}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Tuning {esc(run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}</style></head><body>
<h1>Hyperparameter search, run {esc(run_id)}</h1>
<p>{best_line}. Scored on the validation split only; the test set is used once, by the final candidate.</p>
<h2>Search</h2>{table([{"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v} for k, v in settings.items()])}
<h2>Trials</h2>{table(table_rows(records, kind))}
<h2>Score against each hyperparameter</h2><img alt="validation accuracy against each hyperparameter" src="data:image/png;base64,{png}">
<h2>Search space</h2>{table(space_table(kind))}
</body></html>"""


def search_summary(*, algorithm: str, model: str, trials: int, max_parallel: int, epochs: int,
                   seed: int, cluster: str, workers: list[str], seconds: float,
                   records: list[dict], best: dict | None, warmup_seconds: float | None = None) -> dict:
    """`seconds` is the search from the first trial submitted to the last one ended;
    `warmup_seconds` the workers' start-up before it (TensorFlow import, data load)."""
    completed = sum(r["status"] == COMPLETED for r in records)
    return {"algorithm": algorithm, "model": model, "trials_requested": trials,
            "trials_run": len(records), "trials_completed": completed,
            "trials_failed": len(records) - completed, "max_parallel": max_parallel,
            "epochs": epochs, "seed": seed, "cluster": cluster, "workers": workers,
            "warmup_seconds": warmup_seconds, "seconds": round(seconds, 3),
            "trials_per_minute": round(60 * len(records) / seconds, 3) if seconds > 0 else None,
            "best": best, "space": space_table(model)}


# ---------------------------------------------------------------------------------------------
# The winner, trained for the pipeline
# ---------------------------------------------------------------------------------------------

__all__ = ["DataSource", "SearchFailed", "run_trial", "trial_task", "build_tuned_model", "make_oracle",
           "drive_search", "dask_wait_any", "warm_worker", "best_record", "finish_trial", "store_trial_record",
           "table_rows", "render_search_report", "search_summary", "load_trial_data"]
