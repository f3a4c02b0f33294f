"""The MNIST training pipeline, top to bottom:
preflight -> data versions (an unchanged run ends here) -> fetch -> validate -> ingested data ->
normalize -> train -> evaluate (and on new data) -> plots -> gate -> report -> store (files, then
the manifest) -> [approval, with `require_approval`] -> promote (the last decisive write) ->
publish (artifacts, event, notification, the dashboard) -> retention.

`python flows/train_flow.py --help` runs it once, locally (flows/plumbing.py: exit statuses).
"""
# ruff: noqa: E402  (run as a program, it starts Prefect's server before importing Prefect)

if __name__ == "__main__":
    from mnist_pipeline.startup import fast_start

    fast_start()

import sys
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows import plumbing
from mnist_pipeline.params import TrainParams, flow_parameters
from mnist_pipeline.provenance import provenance
from mnist_pipeline.registry import Candidate
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks import approval
from tasks.evaluate import evaluate_task
from tasks.data import ingested_task, inputs_task, new_data_accuracy, new_data_task, select_versions_task
from tasks.fetch import fetch_task
from tasks.gate import gate_task, preflight_task, promote_task
from tasks.normalize import normalize_task
from tasks.plots import plots_task
from tasks.publish import outcome_of, publish_task, report_pointer
from tasks.report import compare_task, plural, report_input, report_task
from tasks.retention import retention_task
from tasks.stage import recording_timings
from tasks.store_artifacts import restate_task, store_task
from tasks.train import train_task
from tasks.validate import validate_task


@flow(name="mnist-training", retries=2, retry_delay_seconds=10, validate_parameters=True,
      on_failure=[plumbing.on_run_failed],
      description="Fetch, validate and normalize MNIST, train, evaluate, report, and promote the "
                  "model to production only if it passes the gate.")
@flow_parameters(TrainParams, "Train, evaluate and, if it earns it, promote an MNIST model.")
def train_flow(**parameters):
    plumbing.prepare_run()
    if superseded := plumbing.superseded():  # a late scheduled run that a newer one makes pointless
        return superseded
    with plumbing.retried_only_if_transient():
        return run_pipeline(TrainParams(**parameters))


def run_pipeline(params: TrainParams, tuning: dict | None = None):
    """fetch to promote for one model; `tuning`: the search that chose its hyperparameters."""
    run_id, settings, started = plumbing.current_run_id(), load_settings(), datetime.now(timezone.utc).isoformat()
    store, origin = open_store(settings), provenance(started)
    min_accuracy = settings.min_accuracy if params.min_accuracy is None else params.min_accuracy
    min_class_recall = settings.min_class_recall if params.min_class_recall is None else params.min_class_recall
    get_run_logger().info("run %s: %s, %s, batch %d, learning rate %g, seed %d; threshold %.4f; store %s",
                          run_id, params.model, plural(params.epochs, "epoch"), params.batch_size,
                          params.learning_rate, params.seed, min_accuracy, store.url)
    with recording_timings() as timings:
        production = preflight_task(store)  # a store that takes no write or a damaged registry: fail now
        versions = select_versions_task(store, params.data_version)
        origin.update(inputs_task(store, production, params, versions, origin))
        if params.skip_unchanged and not origin["changes_since_production"]:
            return plumbing.unchanged(run_id, production.run_id)
        raw = fetch_task(store, settings.mirrors, settings.deadline_s)
        arrays, profile = validate_task(raw)
        arrays, profile, holdout = ingested_task(store, versions, arrays, profile)
        splits = normalize_task(arrays, params.validation_size, params.seed)
        del raw, arrays
        trained = train_task(splits, params, store, run_id, (tuning or {}).get("hyperparameters"))
        x_test, y_test = splits.x_test, splits.y_test
        del splits  # the training and validation images are done with: free them
        evaluation = evaluate_task(trained.model, x_test, y_test)
        evaluation.metrics.update(new_data_task(store, trained.model, holdout, production))
        new_data = new_data_accuracy(evaluation.metrics)
        recall = {digit: m["recall"] for digit, m in evaluation.metrics["per_class"].items()}
        plots = plots_task(trained.history, evaluation, x_test, y_test, min_accuracy, min_class_recall)
        decision = gate_task(store, evaluation.metrics["test_accuracy"], params, min_accuracy, new_data, recall,
                             min_class_recall)
        comparison = compare_task(store, decision.production_run_id, y_test, evaluation.y_pred)

        def report(decided):
            return report_task(report_input(run_id, params, profile, evaluation, trained, decided,
                                            dict(origin, timings_s=timings), plots, comparison))
        asks = params.require_approval and decision.promote  # a person has the last word
        shown = approval.awaiting(decision, params.approval_timeout) if asks else decision
        manifest = store_task(store, run_id, params, min_accuracy, origin, profile, trained, evaluation, plots,
                              report(shown), shown, timings, tuning)
    verdict = approval.await_approval(run_id, decision, manifest.test_accuracy, report_pointer(store, run_id)[1],
                                      params.approval_timeout) if asks else None
    candidate = Candidate(run_id, trained.model_file["sha256"], manifest.test_accuracy, new_data_accuracy=new_data,
                          class_recall=recall)
    promotion = promote_task(store, candidate, params, min_accuracy, run_id,
                             {"started_at": started, "model": params.model, "epochs": params.epochs,
                              "new_data": evaluation.metrics.get("new_data")}, min_class_recall, verdict)
    warnings = list(promotion.warnings)
    final = approval.told(decision, promotion.decision, verdict)
    if final != shown:  # production changed meanwhile, or a person decided
        warnings += restate_task(store, manifest, report(final), final)
    outcome = outcome_of(run_id, promotion, manifest.test_accuracy, min_accuracy, decision.production_run_id)
    warnings += publish_task(store, settings, run_id, params.model_dump(), evaluation.metrics, outcome)
    if settings.keep_last:
        warnings += retention_task(store, settings.keep_last, run_id)
    return plumbing.decided(promotion.promoted, promotion.reason, {
        "run_id": run_id, "promoted": promotion.promoted, "reason": promotion.reason,
        "test_accuracy": manifest.test_accuracy, "report": report_pointer(store, run_id)[1], "warnings": warnings})


def main(argv: list[str] | None = None) -> int:
    return plumbing.main(train_flow, TrainParams, argv)


if __name__ == "__main__":
    sys.exit(main())
