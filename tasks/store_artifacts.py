"""store artifacts: everything of a run under runs/<run_id>/ (the model is already there, stored
once by train), then the manifest, which records every file's SHA-256, MD5 and size. The
manifest is written after the files and before the promotion: its presence means the run's
files are whole, and the promotion is the run's last decisive write."""

from __future__ import annotations

import io
import json

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore, file_record
from tasks.evaluate import Evaluation


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def run_files(evaluation: Evaluation, plots: dict[str, bytes], report_html: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of what a run stores besides its model."""
    buf = io.BytesIO()
    # What `mnist-pipeline compare` needs for McNemar's test: each test image's predicted class.
    np.save(buf, evaluation.y_pred, allow_pickle=False)
    return {
        "metrics.json": (json.dumps(evaluation.metrics, indent=2).encode(), "application/json"),
        "predictions.npy": (buf.getvalue(), "application/octet-stream"),
        **{f"plots/{name}": (png, "image/png") for name, png in plots.items()},
        "report.html": (report_html, "text/html; charset=utf-8"),
    }


def store_run_files(store: ArtifactStore, run_id: str, evaluation: Evaluation,
                    plots: dict[str, bytes], report_html: bytes) -> dict[str, dict]:
    """Write the files; key -> file_record (sha256, md5, bytes) for the manifest."""
    prefix = run_prefix(run_id)
    records = {}
    for name, (data, content_type) in run_files(evaluation, plots, report_html).items():
        store.put(prefix + name, data, content_type)
        records[prefix + name] = file_record(data)
    return records


def store_manifest(store: ArtifactStore, run_id: str, manifest: dict) -> str:
    key = run_prefix(run_id) + "manifest.json"
    store.put(key, json.dumps(manifest, indent=2, default=str).encode(), "application/json")
    return key


# One retry, soon: botocore has already retried within MNIST_DEADLINE_S, and the flow retries a
# transient failure as a whole. Permanent ones (no space, read-only, refused) are not retried.
_storage_retries = dict(retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=3),
                        retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient,
                        cache_policy=NO_CACHE)


@task(name="store-artifacts", **_storage_retries)
def store_task(store: ArtifactStore, run_id: str, evaluation: Evaluation, plots: dict[str, bytes],
               report_html: bytes) -> dict[str, dict]:
    return store_run_files(store, run_id, evaluation, plots, report_html)


@task(name="store-manifest", **_storage_retries)
def manifest_task(store: ArtifactStore, run_id: str, manifest: dict) -> str:
    return store_manifest(store, run_id, manifest)


def restate(store: ArtifactStore, run_id: str, report_html: bytes, manifest: dict, decision) -> None:
    """The promotion decided differently from the gate (production changed in between): the
    stored report and manifest must tell what really happened. Production is untouched here."""
    key = run_prefix(run_id) + "report.html"
    store.put(key, report_html, "text/html; charset=utf-8")
    manifest = dict(manifest, files=dict(manifest["files"], **{key: file_record(report_html)}),
                    gate={"promoted": decision.promote, "reason": decision.reason, "decision": decision.__dict__})
    store_manifest(store, run_id, manifest)


@task(name="restate", **_storage_retries)
def restate_task(store: ArtifactStore, run_id: str, report_html: bytes, manifest: dict, decision) -> list[str]:
    try:
        restate(store, run_id, report_html, manifest, decision)
    except Exception as exc:  # the decision stands whatever happens to its paperwork
        return [f"the report and manifest could not be restated after the decision changed: {exc}"]
    return []
