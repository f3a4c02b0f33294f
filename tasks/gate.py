"""gate and promote: decide against the threshold and the production model, then promote
through the registry's conditional write."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mnist_pipeline import registry
from mnist_pipeline.params import TrainParams
from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore


def decide(store: ArtifactStore, accuracy: float, params: TrainParams, min_accuracy: float) -> registry.GateDecision:
    production, _ = registry.read_production(store)
    return registry.gate(accuracy, min_accuracy, production, params.max_regression,
                         params.allow_regression)


@task(name="gate", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=retry_if_transient)
def gate_task(store: ArtifactStore, accuracy: float, params: TrainParams, min_accuracy: float) -> registry.GateDecision:
    return decide(store, accuracy, params, min_accuracy)


@task(name="promote", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=retry_if_transient)
def promote_task(store: ArtifactStore, run_id: str, accuracy: float, model_key: str,
                 params: TrainParams, min_accuracy: float) -> registry.PromotionResult:
    return registry.promote(store, run_id, accuracy, model_key, min_accuracy=min_accuracy,
                            max_regression=params.max_regression,
                            allow_regression=params.allow_regression, actor=f"flow-run:{run_id}")
