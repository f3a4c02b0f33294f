"""The MNIST training pipeline, top to bottom:
preflight -> fetch -> validate -> normalize -> train -> evaluate -> plots -> gate -> report ->
store (files, then the manifest) -> promote (the last decisive write) -> publish -> retention.

`python flows/train_flow.py --help` runs it once, locally (flows/plumbing.py: exit statuses).
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from these
# annotations when a deployment loads the flow from its entrypoint; strings would not resolve.
from flows import plumbing  # first: it sets the environment Prefect and TensorFlow read

import argparse
import resource
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from mnist_pipeline.dataset import MNIST_SHA256
from mnist_pipeline.params import (AllowRegression, BatchSize, Epochs, LearningRate, MaxRegression,
                                   MinAccuracy, ModelKind, OneLineParser, Seed, TrainParams, ValidationSize,
                                   documented_params, parse_params)
from mnist_pipeline.provenance import git_commit, package_versions
from mnist_pipeline.registry import Candidate
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks.evaluate import evaluate_task
from tasks.fetch import fetch_task
from tasks.gate import gate_task, preflight_task, promote_task
from tasks.normalize import normalize_task
from tasks.plots import plots_task
from tasks.publish import outcome_of, publish_task, report_pointer
from tasks.report import compare_task, plural, report_input, report_task
from tasks.retention import retention_task
from tasks.store_artifacts import manifest_task, restate_task, store_task
from tasks.train import train_task
from tasks.validate import validate_task


@flow(name="mnist-training", retries=2, retry_delay_seconds=10, validate_parameters=True,
      on_failure=[plumbing.on_run_failed],
      description="Fetch, validate and normalize MNIST, train, evaluate, report, and promote the "
                  "model to production only if it passes the gate.")
@documented_params("Train, evaluate and, if it earns it, promote an MNIST model.")
def train_flow(
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    model: ModelKind = "mlp",
    min_accuracy: MinAccuracy = None,
    max_regression: MaxRegression = 0.005,
    allow_regression: AllowRegression = False,
    validation_size: ValidationSize = 5000,
    seed: Seed = 42,
    learning_rate: LearningRate = None,
):
    params = TrainParams(epochs=epochs, batch_size=batch_size, model=model, min_accuracy=min_accuracy,
                         max_regression=max_regression, allow_regression=allow_regression,
                         validation_size=validation_size, seed=seed, learning_rate=learning_rate)
    with plumbing.retried_only_if_transient():
        return run_pipeline(params)


def run_pipeline(params: TrainParams, tuning: dict | None = None):
    """fetch to promote for one model; `tuning`: the search that chose it (its hyperparameters
    are trained, and the manifest links the search)."""
    run_id, settings, started, timings = plumbing.current_run_id(), load_settings(), now(), {}
    store = open_store(settings)
    min_accuracy = settings.min_accuracy if params.min_accuracy is None else params.min_accuracy
    get_run_logger().info("run %s: %s, %s, batch %d, learning rate %g, seed %d; threshold %.4f; store %s",
                          run_id, params.model, plural(params.epochs, "epoch"), params.batch_size,
                          params.learning_rate, params.seed, min_accuracy, store.url)
    with timed(timings, "preflight"):
        preflight_task(store)  # a store that takes no write or a damaged registry: fail now
    with timed(timings, "fetch"):
        raw = fetch_task(store, settings.mirrors, settings.deadline_s)
    with timed(timings, "validate"):
        arrays, profile = validate_task(raw)
    with timed(timings, "normalize"):
        splits = normalize_task(arrays, params.validation_size, params.seed)
    del raw, arrays
    with timed(timings, "train"):
        trained = train_task(splits, params, store, run_id, (tuning or {}).get("hyperparameters"))
    x_test, y_test = splits.x_test, splits.y_test
    del splits  # the training and validation images (190 MB) are done with: free them
    with timed(timings, "evaluate"):
        evaluation = evaluate_task(trained.model, x_test, y_test)
    accuracy = evaluation.metrics["test_accuracy"]
    with timed(timings, "plots"):
        plots = plots_task(trained.history, evaluation, x_test, y_test, min_accuracy)
    with timed(timings, "gate"):
        decision = gate_task(store, accuracy, params, min_accuracy)
        comparison = compare_task(store, decision.production_run_id, y_test, evaluation.y_pred)
    provenance = {"git_commit": git_commit(), "versions": package_versions(), "dataset_sha256": MNIST_SHA256,
                  "timings_s": timings, "started_at": started.isoformat()}
    with timed(timings, "report"):
        report = report_task(report_input(run_id, params, min_accuracy, profile, evaluation, trained,
                                          decision, provenance, plots, comparison))
    with timed(timings, "store"):
        files = store_task(store, run_id, evaluation, plots, report)
    files[trained.model_key] = trained.model_file
    manifest = {"run_id": run_id, "parameters": params.model_dump(), "min_accuracy": min_accuracy,
                **provenance, "data_profile": profile, "train_seconds": trained.train_seconds,
                "weights": trained.weights, "model_reused_from_earlier_attempt": trained.reused,
                "test_accuracy": accuracy, "files": files, "tuning": tuning,
                "gate": {"promoted": decision.promote, "reason": decision.reason, "decision": decision.__dict__},
                "finished_at": now().isoformat()}
    manifest_task(store, run_id, manifest)  # the run's files are whole; next, the last decisive write
    candidate = Candidate(run_id, trained.model_file["sha256"], accuracy)
    summary = {"started_at": started.isoformat(), "model": params.model, "epochs": params.epochs}
    promotion = promote_task(store, candidate, params, min_accuracy, run_id, summary)
    warnings = list(promotion.warnings)
    if promotion.decision and promotion.decision.promote != decision.promote:  # production changed meanwhile
        warnings += restate_task(store, run_id, report_task(report_input(
            run_id, params, min_accuracy, profile, evaluation, trained, promotion.decision, provenance, plots,
            comparison)), manifest, promotion.decision)
    outcome = outcome_of(run_id, promotion, accuracy, min_accuracy, decision.production_run_id)
    warnings += publish_task(store, settings, run_id, params.model_dump(), evaluation.metrics, outcome)
    if settings.keep_last:
        warnings += retention_task(store, settings.keep_last, run_id)
    return plumbing.decided(promotion.promoted, promotion.reason, {
        "run_id": run_id, "promoted": promotion.promoted, "reason": promotion.reason,
        "test_accuracy": accuracy, "report": report_pointer(store, run_id)[1], "warnings": warnings})


def now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def timed(timings: dict, stage: str):
    t0 = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - t0, 3)
    # peak RSS of this process so far, in MB: shows which stage raises the high-water mark
    timings.setdefault("peak_rss_mb_after", {})[stage] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainParams()
    p = OneLineParser(description="Run the MNIST training pipeline once.",
                      epilog="Exit status: 0 promoted, 3 blocked by the gate, 2 bad parameters, 1 the run failed.")
    p.add_argument("--epochs", type=int, default=None, help="default: the model's (mlp: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's (mlp: 32)")
    # No argparse `choices`: the one parameter model validates it, with the same one-line error
    # as the UI and the deployment.
    p.add_argument("--model", default=defaults.model, help="mlp (the README model) or cnn")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="gate threshold (default: MNIST_MIN_ACCURACY, else 0.97)")
    p.add_argument("--max-regression", type=float, default=defaults.max_regression)
    p.add_argument("--allow-regression", action="store_true")
    p.add_argument("--validation-size", type=int, default=defaults.validation_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--learning-rate", type=float, default=None, help="default: the model's (mlp: 0.001)")
    return p


def main(argv: list[str] | None = None) -> int:
    return plumbing.main(train_flow, build_parser(), lambda args: parse_params(**args).model_dump(), argv)


if __name__ == "__main__":
    sys.exit(main())
