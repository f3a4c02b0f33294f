"""store: everything of a run under runs/<run_id>/ (the model is already there, stored once by
train), then its manifest (mnist_pipeline/manifest.py), built here from what the stages made. The
manifest is written after the files and before the promotion: its presence means the run's files
are whole, and the promotion is the run's last decisive write."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone

import numpy as np
from prefect.tasks import exponential_backoff

from mnist_pipeline import keys
from mnist_pipeline.manifest import Gate, RunManifest
from mnist_pipeline.params import TrainParams
from mnist_pipeline.registry import GateDecision
from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore, file_record
from tasks.evaluate import Evaluation
from tasks.stage import stage
from tasks.train import TrainResult


def run_files(run_id: str, evaluation: Evaluation, plots: dict[str, bytes],
              report_html: bytes) -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, content type) of what a run stores besides its model."""
    buf = io.BytesIO()
    # What `mnist-pipeline compare` needs for McNemar's test: each test image's predicted class.
    np.save(buf, evaluation.y_pred, allow_pickle=False)
    return {
        keys.metrics(run_id): (json.dumps(evaluation.metrics, indent=2).encode(), "application/json"),
        keys.predictions(run_id): (buf.getvalue(), "application/octet-stream"),
        **{keys.plot(run_id, name): (png, "image/png") for name, png in plots.items()},
        keys.report(run_id): (report_html, "text/html; charset=utf-8"),
    }


def gate_record(decision: GateDecision) -> Gate:
    return Gate(promoted=decision.promote, reason=decision.reason, decision=decision.to_json())


def store_run(store: ArtifactStore, run_id: str, params: TrainParams, min_accuracy: float, provenance: dict,
              profile: dict, trained: TrainResult, evaluation: Evaluation, plots: dict[str, bytes],
              report_html: bytes, decision: GateDecision, timings: dict, tuning: dict | None) -> RunManifest:
    """Write the run's files, then its manifest; the manifest."""
    started, files = time.perf_counter(), {}
    for key, (data, content_type) in run_files(run_id, evaluation, plots, report_html).items():
        store.put(key, data, content_type)
        files[key] = file_record(data)
    files[trained.model_key] = trained.model_file
    manifest = RunManifest(
        run_id=run_id, parameters=params.model_dump(), min_accuracy=min_accuracy, **provenance,
        data_profile=profile, finished_at=datetime.now(timezone.utc).isoformat(),
        timings_s=dict(timings, store=round(time.perf_counter() - started, 3)),  # this stage: its files
        train_seconds=trained.train_seconds, weights=trained.weights,
        model_reused_from_earlier_attempt=trained.reused, test_accuracy=evaluation.metrics["test_accuracy"],
        files=files, tuning=tuning, gate=gate_record(decision))
    store.put(keys.manifest(run_id), manifest.to_bytes(), "application/json")
    return manifest


def restate(store: ArtifactStore, manifest: RunManifest, report_html: bytes, decision: GateDecision) -> None:
    """The promotion decided differently from the gate (production changed in between): the
    stored report and manifest must tell what really happened. Production is untouched here."""
    key = keys.report(manifest.run_id)
    store.put(key, report_html, "text/html; charset=utf-8")
    restated = manifest.model_copy(update={"files": {**manifest.files, key: file_record(report_html)},
                                           "gate": gate_record(decision)})
    store.put(keys.manifest(manifest.run_id), restated.to_bytes(), "application/json")


# One retry, soon: botocore has already retried within MNIST_DEADLINE_S, and the flow retries a
# transient failure as a whole. Permanent ones (no space, read-only, refused) are not retried.
_storage_retries = dict(retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=3),
                        retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)


store_task = stage("store", **_storage_retries)(store_run)


@stage("restate", **_storage_retries)
def restate_task(store: ArtifactStore, manifest: RunManifest, report_html: bytes, decision: GateDecision) -> list[str]:
    try:
        restate(store, manifest, report_html, decision)
    except Exception as exc:  # the decision stands whatever happens to its paperwork
        return [f"the report and manifest could not be restated after the decision changed: {exc}"]
    return []
