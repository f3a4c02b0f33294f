"""The training pipeline's stages as plain functions in one process, without Prefect (not even
imported): what `python flows/train_flow.py` would cost with no orchestration at all. bench/run.py
runs it beside the flow, same seed, same store kind, to put the orchestration's own cost on record.

    python bench/pipeline_plain.py MIRROR SEED [--model mlp|cnn] [--epochs E]

It calls the same stage functions as flows/train_flow.py, in the same order, and prints a JSON line
with the time of each stage. (Not part of the product: the flow is the pipeline.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_pipeline import collector, startup  # noqa: E402

# As `python flows/train_flow.py` does (mnist_pipeline/startup.py fast_start): the collector paused
# while the process imports, frozen at exit, and TensorFlow's settings. Process plumbing, not
# orchestration: the comparison keeps it on both sides.
collector.pause_while_importing()
startup.prepare_tensorflow()


def keep_prefect_out() -> None:
    """The stage modules declare their Prefect tasks when imported; this process calls the stage
    functions only, so Prefect is not imported at all: its import is the orchestration's cost
    (docs/performance.md). A stand-in gives the
    names those modules import; the task decorators return the function as is, and anything
    else raises if a stage function ever calls it."""
    def task(fn=None, **_options):
        return fn if fn is not None else (lambda f: f)

    def absent(name):
        def call(*_args, **_kwargs):
            raise RuntimeError(f"bench/pipeline_plain.py runs without Prefect, but a stage called {name}")
        return call

    names = {"prefect": {"task": task, "get_run_logger": absent("get_run_logger")},
             "prefect.cache_policies": {"NO_CACHE": None},
             "prefect.tasks": {"exponential_backoff": lambda **_options: None},
             "prefect.artifacts": {n: absent(n) for n in ("create_progress_artifact", "update_progress_artifact",
                                                          "create_table_artifact", "create_markdown_artifact",
                                                          "create_link_artifact")},
             "prefect.events": {"emit_event": absent("emit_event")}}
    for module_name, attributes in names.items():
        module = types.ModuleType(module_name)
        module.__dict__.update(attributes)
        sys.modules[module_name] = module


keep_prefect_out()

from mnist_pipeline import registry  # noqa: E402
from mnist_pipeline.params import parse_params  # noqa: E402
from mnist_pipeline.provenance import provenance  # noqa: E402
from mnist_pipeline.settings import load_settings  # noqa: E402
from mnist_pipeline.store import open_store  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mirror")
    p.add_argument("seed", type=int)
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int)
    args = p.parse_args()
    from mnist_pipeline.comparison import with_production
    from tasks.evaluate import evaluate_model
    from tasks.fetch import fetch_mnist
    from tasks.gate import decide, preflight
    from tasks.normalize import normalize_and_split
    from tasks.plots import render_plots
    from tasks.report import render_report, report_input
    from tasks.store_artifacts import store_run
    from tasks.train import train_model
    from tasks.validate import validate_mnist

    t_start, started_epoch = time.perf_counter(), time.time()
    settings = load_settings(MNIST_STORE_URL=os.environ.get("MNIST_STORE_URL") or tempfile.mkdtemp(),
                             MNIST_MIRRORS=args.mirror)
    store, params = open_store(settings), parse_params(model=args.model, seed=args.seed, epochs=args.epochs)
    run_id, min_accuracy, timings, started = str(uuid.uuid4()), settings.min_accuracy, {}, datetime.now(timezone.utc)

    def stage(name, fn, *a):
        t0 = time.perf_counter()
        value = fn(*a)
        timings[name] = round(time.perf_counter() - t0, 3)
        return value

    # Timed on its own: the flow imports TensorFlow while its Prefect server starts, so without
    # this line the plain pipeline's train stage would carry the 5-9 s that the flow's does not.
    stage("import tensorflow", lambda: __import__("keras"))
    collector.resume_after_imports()
    stage("preflight", preflight, store)
    raw = stage("fetch", fetch_mnist, store, settings.mirrors, settings.deadline_s)
    arrays, profile = stage("validate", validate_mnist, raw)
    splits = stage("normalize", normalize_and_split, arrays, params.validation_size, params.seed)
    trained = stage("train", train_model, splits, params, store, run_id)
    evaluation = stage("evaluate", evaluate_model, trained.model, splits.x_test, splits.y_test)
    accuracy = evaluation.metrics["test_accuracy"]
    plots = stage("plots", render_plots, trained.history, evaluation, splits.x_test, splits.y_test, min_accuracy)
    decision = stage("gate", decide, store, accuracy, params, min_accuracy)
    comparison = stage("compare-with-production", lambda: with_production(
        store, decision.production_run_id, splits.y_test, evaluation.y_pred) if decision.production_run_id else None)
    origin = provenance(started.isoformat())
    html = stage("report", lambda: render_report(report_input(run_id, params, profile, evaluation, trained, decision,
                                                               dict(origin, timings_s=timings), plots, comparison)))
    stage("store", store_run, store, run_id, params, min_accuracy, origin, profile, trained, evaluation, plots,
          html, decision, timings, None)
    candidate = registry.Candidate(run_id, trained.model_file["sha256"], accuracy)
    result = stage("promote", lambda: registry.promote(store, candidate, min_accuracy=min_accuracy, source="flow"))
    print(json.dumps({"run_id": run_id, "test_accuracy": accuracy, "promoted": result.promoted,
                      "train_seconds": trained.train_seconds, "timings_s": timings,
                      "in_process_s": round(time.perf_counter() - t_start, 3),
                      "started_epoch": started_epoch, "finished_epoch": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
