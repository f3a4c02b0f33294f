"""The MNIST training pipeline, top to bottom:
fetch -> validate -> normalize -> train -> evaluate -> plots -> gate -> report -> store -> promote.

`python flows/train_flow.py --help` runs it once, locally. Exit status (DESIGN.md): 0 = stored
and promoted; 3 = stored, promotion blocked by the gate, production unchanged; other = failed.
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from these
# annotations when a deployment loads the flow from its entrypoint; strings would not resolve.
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ chatter is not our log

import argparse
import resource
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Completed

from mnist_pipeline.ephemeral_server import ephemeral_server
from mnist_pipeline.errors import ConfigError, PermanentError, PipelineError
from mnist_pipeline.params import (AllowRegression, BatchSize, Epochs, LearningRate, MaxRegression,
                                   MinAccuracy, ModelKind, Seed, TrainParams, ValidationSize,
                                   documented_params, parse_params)
from mnist_pipeline.provenance import git_commit, package_versions
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks.evaluate import evaluate_task
from tasks.fetch import MNIST_SHA256, fetch_task
from tasks.gate import gate_task, promote_task
from tasks.normalize import normalize_task
from tasks.plots import plots_task
from tasks.report import publish_task, render_report, report_task
from tasks.store_artifacts import manifest_task, store_task
from tasks.train import train_task
from tasks.validate import validate_task

EXIT_PROMOTED, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3


@contextmanager
def _timed(timings: dict, stage: str):
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 3)
    # peak RSS of this process so far, in MB: shows which stage raises the high-water mark
    timings.setdefault("peak_rss_mb_after", {})[stage] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _stop_flow_retries() -> None:
    """Bad data or settings will fail the same way again: turn the flow's retries off for this
    run (Prefect 3 flows have no retry condition; the server retries any failure otherwise)."""
    from prefect.client.orchestration import get_client

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    policy = ctx.flow_run.empirical_policy
    policy.retries = 0
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, empirical_policy=policy)


@flow(name="mnist-training", retries=2, retry_delay_seconds=15, validate_parameters=True,
      description="Fetch, validate and normalize MNIST, train, evaluate, report, and promote the "
                  "model to production only if it passes the gate.")
@documented_params("Train, evaluate and, if it earns it, promote an MNIST model.")
def train_flow(
    epochs: Epochs = 10,
    batch_size: BatchSize = 32,
    model: ModelKind = "mlp",
    min_accuracy: MinAccuracy = None,
    max_regression: MaxRegression = 0.005,
    allow_regression: AllowRegression = False,
    validation_size: ValidationSize = 5000,
    seed: Seed = 42,
    learning_rate: LearningRate = 0.001,
):
    params = TrainParams(epochs=epochs, batch_size=batch_size, model=model, min_accuracy=min_accuracy,
                         max_regression=max_regression, allow_regression=allow_regression,
                         validation_size=validation_size, seed=seed, learning_rate=learning_rate)
    try:
        return run_pipeline(params)
    except PermanentError:
        _stop_flow_retries()
        raise


def run_pipeline(params: TrainParams):
    log = get_run_logger()
    run_id = str(FlowRunContext.get().flow_run.id)
    settings = load_settings()
    store = open_store(settings)
    min_accuracy = params.min_accuracy if params.min_accuracy is not None else settings.min_accuracy
    started, timings = datetime.now(timezone.utc), {}
    log.info("run %s: %s, store %s", run_id, params.model_dump(), store.url)

    with _timed(timings, "fetch"):
        raw = fetch_task(store, settings.mirrors)
    with _timed(timings, "validate"):
        arrays, profile = validate_task(raw)
    with _timed(timings, "normalize"):
        splits = normalize_task(arrays, params.validation_size, params.seed)
    del raw, arrays
    with _timed(timings, "train"):
        trained = train_task(splits, params, store, run_id)
    x_test, y_test = splits.x_test, splits.y_test
    del splits  # the training and validation images (190 MB) are done with: free them
    with _timed(timings, "evaluate"):
        evaluation = evaluate_task(trained.model, x_test, y_test)
    accuracy = evaluation.metrics["test_accuracy"]
    with _timed(timings, "plots"):
        plots = plots_task(trained.history, evaluation, x_test, y_test)
    with _timed(timings, "gate"):
        decision = gate_task(store, accuracy, params, min_accuracy)
    training = {"seconds": round(trained.train_seconds, 3), "weights": trained.weights}
    report_args = (run_id, params.model_dump(), profile, evaluation.metrics, training)
    with _timed(timings, "report"):
        report_html = report_task(*report_args, decision, plots)
    with _timed(timings, "store"):
        stored = store_task(store, run_id, evaluation, plots, report_html)
    with _timed(timings, "promote"):
        # Decided again under the conditional write: production may have changed since the gate.
        promotion = promote_task(store, run_id, accuracy, trained.model_key, params, min_accuracy)
    report_key = f"runs/{run_id}/report.html"
    if promotion.decision and promotion.decision != decision:
        decision = promotion.decision  # the stored report must tell what really happened
        store.put(report_key, render_report(*report_args, decision, plots))
    promoted, reason = promotion.promoted, promotion.reason
    report_url = store.link(report_key)
    publish_task(run_id, params.model_dump(), evaluation.metrics, decision, report_url)
    manifest = {
        "run_id": run_id, "parameters": params.model_dump(), "min_accuracy": min_accuracy,
        "dataset_sha256": MNIST_SHA256, "data_profile": profile, "versions": package_versions(),
        "git_commit": git_commit(), "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "timings_s": timings,
        "train_seconds": training["seconds"], "weights": trained.weights,
        "model_reused_from_earlier_attempt": trained.reused,
        "test_accuracy": accuracy, "files": stored + [trained.model_key],
        "gate": {"promoted": promoted, "reason": reason, "decision": decision.__dict__,
                 "history_key": promotion.history_key},
    }
    manifest_task(store, run_id, manifest)
    summary = {"run_id": run_id, "promoted": promoted, "reason": reason, "test_accuracy": accuracy,
               "report_key": report_key, "store": store.url}
    log.info("run %s: %s", run_id, "promoted" if promoted else reason)
    # A blocked promotion is a successful run with a verdict, not a failure to retry.
    return Completed(message="promoted" if promoted else reason, data=summary)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainParams()
    p = argparse.ArgumentParser(description="Run the MNIST training pipeline once.",
                                epilog="Exit status: 0 promoted, 3 blocked by the gate, other: failed.")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    # No argparse `choices`: the one parameter model validates it, with the same one-line error
    # as the UI and the deployment.
    p.add_argument("--model", default=defaults.model, help="mlp (the README model) or cnn")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="gate threshold (default: MNIST_MIN_ACCURACY, else 0.97)")
    p.add_argument("--max-regression", type=float, default=defaults.max_regression)
    p.add_argument("--allow-regression", action="store_true")
    p.add_argument("--validation-size", type=int, default=defaults.validation_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    return p


def _load_tensorflow() -> None:
    try:
        import keras  # noqa: F401
    except Exception:  # the train task's own import will report it
        pass


@contextmanager
def _tensorflow_imported_in_background():
    """TensorFlow takes seconds to import; do it while Prefect's server starts (a separate
    process), instead of after. The train task's own import then finds it loaded.
    The import is always waited for on the way out, even after an early error: Python shutting
    down while a thread is inside TensorFlow's C++ start-up aborted the process (SIGABRT,
    "terminate called without an active exception") instead of exiting with our status."""
    import threading

    loader = threading.Thread(target=_load_tensorflow, name="import-tensorflow", daemon=True)
    loader.start()
    try:
        yield
    finally:
        loader.join()


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        load_settings()  # fail before any work on a bad environment
        params = parse_params(**args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ephemeral_server() as server, _tensorflow_imported_in_background():
        try:
            if server:
                server.wait_ready()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        state = train_flow(**params.model_dump(), return_state=True)
    if state.is_completed():
        summary = state.result()
        print(f"run {summary['run_id']}: test accuracy {summary['test_accuracy']:.4f}; "
              f"{'promoted to production' if summary['promoted'] else summary['reason']}; "
              f"report: {summary['store']}/{summary['report_key']}")
        return EXIT_PROMOTED if summary["promoted"] else EXIT_BLOCKED
    exc = state.result(raise_on_failure=False)
    detail = str(exc) if isinstance(exc, PipelineError) else (state.message or "unknown error")
    print(f"error: run failed: {detail}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
