"""store artifacts: everything of a run under runs/<run_id>/ (the model is already there, stored
once by train). The manifest is written last, so its presence means the run's files are whole."""

from __future__ import annotations

import io
import json

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore
from tasks.evaluate import Evaluation


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def store_run_files(store: ArtifactStore, run_id: str, evaluation: Evaluation,
                    plots: dict[str, bytes], report_html: bytes) -> list[str]:
    prefix = run_prefix(run_id)
    buf = io.BytesIO()
    # What `mnist-pipeline compare` needs for McNemar's test: each test image's predicted class.
    np.save(buf, evaluation.y_pred, allow_pickle=False)
    files = {
        "metrics.json": (json.dumps(evaluation.metrics, indent=2).encode(), "application/json"),
        "predictions.npy": (buf.getvalue(), "application/octet-stream"),
        **{f"plots/{name}": (png, "image/png") for name, png in plots.items()},
        "report.html": (report_html, "text/html; charset=utf-8"),
    }
    for name, (data, content_type) in files.items():
        store.put(prefix + name, data, content_type)
    return [prefix + name for name in files]


def store_manifest(store: ArtifactStore, run_id: str, manifest: dict) -> str:
    key = run_prefix(run_id) + "manifest.json"
    store.put(key, json.dumps(manifest, indent=2, default=str).encode(), "application/json")
    return key


_storage_retries = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2),
                        retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient,
                        cache_policy=NO_CACHE)


@task(name="store-artifacts", **_storage_retries)
def store_task(store: ArtifactStore, run_id: str, evaluation: Evaluation, plots: dict[str, bytes],
               report_html: bytes) -> list[str]:
    return store_run_files(store, run_id, evaluation, plots, report_html)


@task(name="store-manifest", **_storage_retries)
def manifest_task(store: ArtifactStore, run_id: str, manifest: dict) -> str:
    return store_manifest(store, run_id, manifest)
