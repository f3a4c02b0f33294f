"""The hyperparameter search driver: Keras Tuner's oracle proposes trials in the flow's process,
each trial (tasks/trial.py) a Prefect task on a Dask cluster through prefect-dask's
DaskTaskRunner, up to K in flight; its results go back to the oracle as they arrive. What the
search leaves behind is tasks/search_report.py's."""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from typing import Callable, Iterable, Optional

from mnist_pipeline.errors import ClusterUnavailable, PermanentError
from mnist_pipeline.params import TuneParams
from mnist_pipeline.search_space import ALGORITHMS, OBJECTIVE, hyperparameters_for
from tasks.search_report import publish_search, search_summary, store_trial_record
from tasks.trial import COMPLETED, FAILED, HYPERBAND_KEYS, DataSource, one_line, trial_task, warm_worker


class SearchFailed(PermanentError):
    """No trial completed: nothing to promote."""



def make_oracle(algorithm: str, model_kind: str, trials: int, epochs: int, seed: int, directory: str):
    """A Keras Tuner oracle over this kind's space, maximising val_accuracy, driven from outside
    (create_trial / update_trial / end_trial). It writes its state (oracle.json, one
    trial.json per trial) under `directory`/search; the caller owns `directory` and removes it."""
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
    oracle._set_project_dir(directory, "search")
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


NO_WORKER_TIMEOUT_S = 120.0  # how long trials wait for a Dask worker, at the start or when all are gone


def dask_wait_any(futures: dict, poll_s: float = 2.0, no_worker_timeout_s: float = NO_WORKER_TIMEOUT_S,
                  log=None) -> list[tuple[str, dict]]:
    """wait_any for PrefectDaskFutures: the trials that are done, and their outcomes.

    A worker killed mid-trial is Dask's to handle: the scheduler reruns the task on another
    worker (up to distributed.scheduler.allowed-failures times, then KilledWorker, recorded
    as a failed trial). With no worker at all the tasks would wait forever: after
    `no_worker_timeout_s` without one, the trials in flight are recorded as failed."""
    import distributed

    by_dask = {f.wrapped_future: tid for tid, f in futures.items()}
    client = next(iter(by_dask)).client
    try:
        return _wait_any(client, futures, by_dask, poll_s, no_worker_timeout_s, log)
    except (distributed.client.FuturesCancelledError, OSError):  # OSError: Dask's CommClosedError too
        # the client lost its scheduler: every call to it fails from now on
        raise ClusterUnavailable(f"the Dask scheduler at {getattr(client.scheduler, 'address', '?')} was lost "
                                 "during the search (its trials with it); check that it is up, and run the "
                                 "search again") from None


def _wait_any(client, futures: dict, by_dask: dict, poll_s: float, no_worker_timeout_s: float,
              log) -> list[tuple[str, dict]]:
    import distributed

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
            try:
                client.wait_for_workers(1, timeout=NO_WORKER_TIMEOUT_S)
            except TimeoutError:  # Dask's WorkerStartTimeoutError: Prefect took it for the flow's own timeout
                raise ClusterUnavailable(f"no worker joined the Dask scheduler at {address} within "
                                         f"{NO_WORKER_TIMEOUT_S:.0f} s; start workers for it (`dask worker "
                                         f"{address}`)") from None
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
            started = time.perf_counter()  # after the oracle's import of Keras Tuner

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
