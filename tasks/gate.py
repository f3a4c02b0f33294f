"""preflight, gate and promote.

preflight runs before anything else: the store must take a write, and the registry must be
readable and its production model the bytes that were promoted; otherwise the run fails in
seconds, not after training. gate decides against the threshold and the production model;
promote writes production.json conditionally (decided again if production changed meanwhile).
"""

from __future__ import annotations

import threading

from prefect import get_run_logger
from prefect.tasks import exponential_backoff

from mnist_pipeline import registry
from mnist_pipeline.params import TrainParams
from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore
from tasks.stage import stage


def preflight(store: ArtifactStore) -> registry.Production | None:
    store.probe_writable()
    production, _ = registry.read_production(store)
    if production is not None:
        registry.check_production_model(store, production)
    return production


def decide(store: ArtifactStore, accuracy: float, params: TrainParams, min_accuracy: float,
           new_data_accuracy: float | None = None, class_recall: dict[str, float] | None = None,
           min_class_recall: float | None = None) -> registry.GateDecision:
    production, _ = registry.read_production(store)
    if production is not None:
        registry.check_production_model(store, production)  # a champion must be what was promoted
    return registry.gate(accuracy, min_accuracy, production, params.max_regression, params.allow_regression,
                         new_data_accuracy, params.min_new_data_accuracy, class_recall, min_class_recall)


@stage("preflight")
def preflight_task(store: ArtifactStore) -> registry.Production | None:
    production = preflight(store)
    get_run_logger().info("store %s is writable; production: %s", store.url,
                          f"{production.run_id} ({production.test_accuracy:.4f})" if production else "none")
    return production


@stage("gate", retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient)
def gate_task(store: ArtifactStore, accuracy: float, params: TrainParams, min_accuracy: float,
              new_data_accuracy: float | None = None, class_recall: dict[str, float] | None = None,
              min_class_recall: float | None = None) -> registry.GateDecision:
    decision = decide(store, accuracy, params, min_accuracy, new_data_accuracy, class_recall, min_class_recall)
    get_run_logger().info("gate: %s: %s", "promote" if decision.promote else "block", decision.reason)
    return decision


# A run stopped from another thread (its Prefect server lost) takes this lock before it reads what
# production names and exits: a promotion being written is finished first, none starts after.
PROMOTING = threading.Lock()
promotions_begun: list[str] = []  # run ids, in this process: a stopped run's exit status reads production


@stage("promote", retries=1,
      retry_delay_seconds=exponential_backoff(backoff_factor=3), retry_condition_fn=retry_if_transient)
def promote_task(store: ArtifactStore, candidate: registry.Candidate, params: TrainParams,
                 min_accuracy: float, run_id: str, summary: dict, min_class_recall: float | None = None,
                 approval=None) -> registry.PromotionResult:
    """`approval`: the person's verdict (tasks/approval.py) when the run asked for one: a rejection
    (or none in time) is recorded as blocked, an approval goes into the promotion's record."""
    record = dict(min_accuracy=min_accuracy, actor=f"flow-run:{run_id}", source="flow", summary=summary,
                  note=approval.note if approval else "", extra=approval.record() if approval else None)
    promotions_begun.append(run_id)
    with PROMOTING:
        if approval and not approval.approved:
            result = registry.decline(store, candidate, approval.reason, **record)
        else:
            result = registry.promote(store, candidate, max_regression=params.max_regression,
                                      allow_regression=params.allow_regression,
                                      min_new_data_accuracy=params.min_new_data_accuracy,
                                      min_class_recall=min_class_recall, **record)
    log = get_run_logger()
    log.info("promotion: %s: %s", "promoted" if result.promoted else "blocked", result.reason)
    for warning in result.warnings:
        log.warning(warning)
    return result
