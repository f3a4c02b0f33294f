"""A run's manifest (runs/<run_id>/manifest.json): what the run was asked, what it used, what it
made and what was decided. Written after every other file of the run and before the promotion, so
its presence means the run's files are whole; it records each file's SHA-256, MD5 and size, which
every later use of the files checks (docs/registry.md).

Readers treat manifests as plain JSON: runs stored by earlier versions lack newer fields."""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict


class Gate(BaseModel):
    promoted: bool
    reason: str
    decision: dict  # mnist_pipeline.registry.gate.GateDecision.to_json(): the checks with their numbers


class RunManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    parameters: dict[str, Any]
    min_accuracy: float  # the threshold applied (the parameter, else MNIST_MIN_ACCURACY)
    git_commit: Optional[str]
    versions: dict[str, str]  # Python and the libraries that decide what is learned
    dataset_sha256: dict[str, str]
    data_profile: dict[str, Any]
    started_at: str
    finished_at: str
    timings_s: dict[str, Any]  # stage -> seconds, and "peak_rss_mb_after": stage -> MB
    train_seconds: float
    weights: str  # which weights the model holds (e.g. a moving average)
    model_reused_from_earlier_attempt: bool
    test_accuracy: float
    files: dict[str, dict]  # key -> {"sha256", "md5", "bytes"}
    tuning: Optional[dict] = None  # the search that chose the hyperparameters (flows/tune_flow.py)
    gate: Gate
    source_sha256: Optional[str] = None  # the pipeline's own source files: its version without .git
    data_versions: list[dict] = []  # the ingested versions learned from: version, sha256, train, holdout
    changes_since_production: Optional[list[str]] = None  # what differs from production's run (run_inputs.py)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), indent=2).encode()
