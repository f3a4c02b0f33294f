"""The hyperparameter search, as the tune flow runs it: a Dask cluster through prefect-dask's
DaskTaskRunner, Keras Tuner's oracle driving trials (tasks/tune.py) in flight on it, and what the
search leaves behind (runs/<id>/tuning/: a record per trial, search.json, report.html; the Prefect
UI's trials table)."""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from typing import Optional

from prefect.artifacts import create_table_artifact

from mnist_pipeline.errors import ClusterUnavailable
from mnist_pipeline.params import TuneParams
from tasks.publish import link_artifact
from tasks.tune import (DataSource, best_record, dask_wait_any, drive_search, make_oracle, one_line,
                        render_search_report, search_summary, store_trial_record, table_rows, trial_task,
                        warm_worker)


def check_scheduler(address: str) -> None:
    """The scheduler at `address` answers (its identity) within Dask's connect timeout
    (distributed.comm.timeouts.connect, 30 s; DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT), or a
    one-line ClusterUnavailable. distributed bounds the TCP connection by it, not the handshake
    after: a host that accepted the connection and never answered held the flow forever."""
    import asyncio

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect  # first: it loads distributed's configuration

    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")

    async def identity():
        comm = await connect(address, timeout=timeout)  # the handshake included, unbounded
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        asyncio.run(asyncio.wait_for(identity(), timeout))
    except (OSError, asyncio.TimeoutError):
        raise ClusterUnavailable(
            f"the Dask scheduler at {address} did not answer within {timeout:g} s; check "
            "MNIST_DASK_ADDRESS and that the scheduler is up (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT "
            "sets the wait)") from None


def dask_task_runner(address: Optional[str], max_parallel: Optional[int]):
    """An existing cluster, or a LocalCluster of single-threaded worker processes: one per core
    (fewer if max_parallel says so). Processes, not threads: TensorFlow and the GIL."""
    from prefect_dask import DaskTaskRunner

    if address:
        check_scheduler(address)
        return DaskTaskRunner(address=address)
    cores = os.cpu_count() or 1
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": min(max_parallel or cores, cores), "threads_per_worker": 1,
        "processes": True, "dashboard_address": ":0"})


def dask_setup(worker) -> None:
    """A LocalCluster worker's preload (Dask calls it as the worker starts, in its process): it
    ignores SIGINT. A Ctrl-C at the terminal reaches every process of the foreground group; the
    run stops its workers itself, and their KeyboardInterrupt tracebacks were its last 60 lines."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cnn_threads_per_trial(address: Optional[str], n_workers: int) -> Optional[int]:
    """Cores per worker on a LocalCluster (all workers share this machine); on an external
    cluster TensorFlow's default."""
    return None if address else max(1, (os.cpu_count() or 1) // max(1, n_workers))


def run_search(p: TuneParams, address: Optional[str], store, run_id: str, source: DataSource,
               log) -> tuple[list, dict]:
    """The search: Keras Tuner's oracle here, each trial a Prefect task on the Dask cluster (an
    existing one at `address`, else a LocalCluster); each trial's record is stored as it ends,
    and the summary, report and trials table are published even when every trial failed."""
    import dask

    with dask_task_runner(address, p.max_parallel) as runner:
        # A LocalCluster's workers take this process's Dask config: no statistical profiler
        # sampling their stacks every 10 ms while trials compete for the cores; dask_setup above.
        with dask.config.set({"distributed.worker.profile.enabled": False,
                              "distributed.worker.preload": [] if address else [__name__]}):
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
    link_artifact(store, report_key, "mnist-tuning-report", "tuning report")
