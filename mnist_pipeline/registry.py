"""The model registry: the gate rules, `registry/production.json` and its history.

production.json changes only by a conditional write (create-only when absent, If-Match otherwise),
and only after the model it will name has been read back from the store and loaded in Keras safe
mode, so production never names a model that does not load. A lost race is re-decided against the
new production model. Every decision appends one create-only record under registry/history/.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mnist_pipeline.errors import NotFoundInStore, PipelineError, PreconditionFailed
from mnist_pipeline.models import model_from_bytes
from mnist_pipeline.store import ArtifactStore

PRODUCTION_KEY = "registry/production.json"
HISTORY_PREFIX = "registry/history/"


class RegistryError(PipelineError):
    pass


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    min_accuracy: float
    production_run_id: str | None = None
    production_accuracy: float | None = None


def gate(accuracy: float, min_accuracy: float, production: dict | None,
         max_regression: float = 0.005, allow_regression: bool = False) -> GateDecision:
    """The promotion rules: the threshold always; the champion rule unless regression is allowed."""
    prod_id = production.get("run_id") if production else None
    prod_acc = production.get("test_accuracy") if production else None
    common = dict(min_accuracy=min_accuracy, production_run_id=prod_id, production_accuracy=prod_acc)
    if accuracy < min_accuracy:
        return GateDecision(False, f"promotion blocked: {accuracy:.3f} < {min_accuracy:.3f}", **common)
    if prod_acc is not None and accuracy < prod_acc - max_regression:
        if not allow_regression:
            return GateDecision(False, (
                f"promotion blocked: {accuracy:.4f} is below production {prod_id} "
                f"({prod_acc:.4f}) by more than {max_regression:g}"), **common)
        return GateDecision(True, (f"{accuracy:.4f} >= {min_accuracy:.3f}; regression from "
                                   f"{prod_acc:.4f} allowed on purpose"), **common)
    if prod_acc is None:
        versus = ""
    elif accuracy >= prod_acc:
        versus = f" and >= production {prod_acc:.4f}"
    else:
        versus = f" and within {max_regression:g} of production {prod_acc:.4f}"
    return GateDecision(True, f"{accuracy:.4f} >= {min_accuracy:.3f}{versus}", **common)


def read_production(store: ArtifactStore) -> tuple[dict | None, str | None]:
    try:
        data, etag = store.get_with_etag(PRODUCTION_KEY)
    except NotFoundInStore:
        return None, None
    return json.loads(data), etag


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "unknown"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def append_history(store: ArtifactStore, record: dict) -> str:
    """One create-only record per decision; a same-microsecond clash gets a new timestamp."""
    for _ in range(5):
        ts = _now().strftime("%Y%m%dT%H%M%S.%fZ")
        key = f"{HISTORY_PREFIX}{ts}-{record['run_id']}.json"
        try:
            store.put_if_absent(key, json.dumps(dict(record, recorded_at=ts), indent=2).encode())
            return key
        except PreconditionFailed:
            continue
    raise RegistryError("could not write a unique history record")


def read_history(store: ArtifactStore) -> list[dict]:
    """All decisions, oldest first."""
    records = []
    for key in store.list(HISTORY_PREFIX):
        record = json.loads(store.get(key))
        record["key"] = key
        records.append(record)
    return records


def verified_model_sha256(store: ArtifactStore, model_key: str) -> str:
    """Read the model back from the store and load it in safe mode; its SHA-256 if it loads."""
    try:
        data = store.get(model_key)
    except NotFoundInStore:
        raise RegistryError(f"{model_key} is not in the store; nothing to promote") from None
    model_from_bytes(data, model_key)
    return hashlib.sha256(data).hexdigest()


@dataclass
class PromotionResult:
    promoted: bool
    reason: str
    decision: GateDecision | None
    production: dict | None  # production.json after the attempt
    history_key: str | None
    already: bool = False

    def to_json(self) -> dict:
        out = asdict(self)
        return out


def promote(store: ArtifactStore, run_id: str, test_accuracy: float, model_key: str, *,
            min_accuracy: float, max_regression: float = 0.005, allow_regression: bool = False,
            actor: str | None = None, note: str = "", attempts: int = 5) -> PromotionResult:
    """Gate the candidate against the current production model and, if it passes, point
    production at it. Idempotent: promoting the run that is already production is a no-op."""
    actor = actor or default_actor()
    model_sha = None
    for _ in range(attempts):
        current, etag = read_production(store)
        if current and current.get("run_id") == run_id:
            # A retry after production was written: make sure the decision is on record, once.
            recorded = any(r.get("run_id") == run_id and r.get("decision") == "promoted"
                           for r in read_history(store))
            key = None if recorded else append_history(store, {
                "run_id": run_id, "test_accuracy": test_accuracy, "actor": actor, "note": note,
                "decision": "promoted", "reason": current.get("reason", ""), "model_key": model_key,
                "production_before": current.get("previous_run_id")})
            return PromotionResult(True, "already in production", None, current, key, already=True)
        decision = gate(test_accuracy, min_accuracy, current, max_regression, allow_regression)
        base = {"run_id": run_id, "test_accuracy": test_accuracy, "actor": actor, "note": note,
                "min_accuracy": min_accuracy, "max_regression": max_regression,
                "allow_regression": allow_regression,
                "production_before": current.get("run_id") if current else None}
        if not decision.promote:
            key = append_history(store, dict(base, decision="blocked", reason=decision.reason))
            return PromotionResult(False, decision.reason, decision, current, key)
        model_sha = model_sha or verified_model_sha256(store, model_key)
        record = {"run_id": run_id, "test_accuracy": test_accuracy, "model_key": model_key,
                  "model_sha256": model_sha, "promoted_at": _now().isoformat(),
                  "previous_run_id": current.get("run_id") if current else None,
                  "promoted_by": actor, "reason": decision.reason}
        body = json.dumps(record, indent=2).encode()
        try:
            if etag is None:
                store.put_if_absent(PRODUCTION_KEY, body)
            else:
                store.put_if_match(PRODUCTION_KEY, body, etag)
        except PreconditionFailed:
            continue  # someone else changed production: decide again against the new champion
        key = append_history(store, dict(base, decision="promoted", reason=decision.reason,
                                         model_key=model_key, model_sha256=model_sha))
        return PromotionResult(True, decision.reason, decision, record, key)
    reason = f"promotion blocked: production kept changing ({attempts} conditional writes refused)"
    key = append_history(store, dict(base, decision="blocked", reason=reason))
    current, _ = read_production(store)
    return PromotionResult(False, reason, None, current, key)


def run_metrics(store: ArtifactStore, run_id: str) -> dict:
    try:
        return json.loads(store.get(f"runs/{run_id}/metrics.json"))
    except NotFoundInStore:
        raise RegistryError(f"run {run_id} not found in {store.url} (no runs/{run_id}/metrics.json); "
                            "list runs with `mnist-pipeline runs`") from None


def rollback(store: ArtifactStore, *, min_accuracy: float, actor: str | None = None,
             note: str = "") -> PromotionResult:
    """Point production back at the model it replaced, through the same checks and conditional
    write as a promotion (threshold, safe-mode load); the champion rule does not apply, since
    going back to an earlier model is the point."""
    actor = actor or default_actor()
    current, etag = read_production(store)
    if not current:
        raise RegistryError("nothing is in production; there is nothing to roll back")
    target = current.get("previous_run_id")
    if not target:
        raise RegistryError(f"production {current['run_id']} has no earlier production model to roll back to")
    accuracy = float(run_metrics(store, target)["test_accuracy"])
    base = {"run_id": target, "test_accuracy": accuracy, "actor": actor, "note": note,
            "min_accuracy": min_accuracy, "production_before": current["run_id"]}
    if accuracy < min_accuracy:
        reason = f"rollback blocked: {accuracy:.3f} < {min_accuracy:.3f}"
        key = append_history(store, dict(base, decision="blocked", reason=reason))
        return PromotionResult(False, reason, None, current, key)
    model_key = f"runs/{target}/model.keras"
    model_sha = verified_model_sha256(store, model_key)
    earlier = [r for r in read_history(store)
               if r.get("run_id") == target and r.get("decision") in ("promoted", "rollback")]
    record = {"run_id": target, "test_accuracy": accuracy, "model_key": model_key,
              "model_sha256": model_sha, "promoted_at": _now().isoformat(),
              "previous_run_id": earlier[-1].get("production_before") if earlier else None,
              "promoted_by": actor, "reason": f"rollback from {current['run_id']}"}
    try:
        store.put_if_match(PRODUCTION_KEY, json.dumps(record, indent=2).encode(), etag)
    except PreconditionFailed:
        raise RegistryError("production changed while rolling back; nothing was changed, "
                            "check `mnist-pipeline history` and retry") from None
    key = append_history(store, dict(base, decision="rollback", reason=record["reason"],
                                     model_key=model_key, model_sha256=model_sha))
    return PromotionResult(True, record["reason"], None, record, key)
