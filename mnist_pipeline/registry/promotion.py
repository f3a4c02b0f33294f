"""The promotion transactions: promote (gate the candidate against production, then point
production at it) and rollback (pop the rollback stack).

production.json changes only by a conditional write (create-only when absent, If-Match
otherwise), after the model it will name has been read back, hash-checked and loaded in Keras
safe mode. It carries the rollback stack: the models that were in production before, newest
last, so a rollback pops one and never returns to a model that was rolled back. Every decision
gets one create-only record under registry/history/, written after the conditional write: the
promotion is the last thing that decides, and a failure after it is reported as what it is.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field

from mnist_pipeline import keys
from mnist_pipeline.errors import DamagedRegistry, PipelineError, PreconditionFailed, RegistryError
from mnist_pipeline.params import DEFAULT_MAX_REGRESSION
from mnist_pipeline.registry.gate import BLOCKED, GateDecision, gate
from mnist_pipeline.registry.history import default_actor, new_history_key, now, write_history
from mnist_pipeline.registry.schema import ROLLBACK_DEPTH, ROLLBACK_FROM, Production, StackEntry, parse_production
from mnist_pipeline.registry.verification import (Candidate, check_production_model, collected,
                                                  measure_on_test_set, read_production,
                                                  read_production_raw, sha256, verified_bytes)
from mnist_pipeline.store import ArtifactStore

@dataclass
class PromotionResult:
    promoted: bool
    reason: str
    decision: GateDecision | None
    production: dict | None  # production.json after the attempt
    history_key: str | None
    already: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _stack_after_promoting_over(current: Production | None) -> list[StackEntry]:
    if current is None:
        return []
    return (list(current.stack) + [current.entry()])[-ROLLBACK_DEPTH:]


def _write_production(store: ArtifactStore, record: Production, etag: str | None) -> None:
    body = json.dumps(record.model_dump(), indent=2).encode()
    if etag is None:
        store.put_if_absent(keys.PRODUCTION, body)
    else:
        store.put_if_match(keys.PRODUCTION, body, etag)


def _landed(store: ArtifactStore, history_key: str) -> bool:
    """Whether a write whose precondition failed is in place all the same: a request the server
    applied but answered with an error (HTTP 500) is retried, and the retry fails against itself.
    Production then names this attempt's own history key, which no other writer has."""
    try:
        current, _ = read_production(store)
    except PipelineError:
        return False
    return current is not None and current.history_key == history_key


def _record_after_write(store: ArtifactStore, record: dict, key: str, warnings: list[str]) -> str | None:
    """Production has changed: whatever happens now, the decision stands. A history record that
    cannot be written is a warning (verify reports it), never a reason to say "failed"."""
    try:
        return write_history(store, record, key)
    except PipelineError as exc:
        warnings.append(f"production changed, but its history record {key} could not be written "
                        f"({exc}); run `mnist-pipeline verify`")
        return None


def _ensure_recorded(store: ArtifactStore, current: Production, record: dict, actor: str) -> str | None:
    """A retry after production was written: its history record, if the first attempt died
    before writing it (its key is in production.json, so this costs one request). When a rollback
    put this run there, the record says so, from production.json, not "promoted"."""
    key = current.history_key
    if not key or store.exists(key):
        return None
    if current.rolled_back_from is not None:
        left = current.rolled_back_from
        record = {"decision": "rollback", "run_id": current.run_id, "test_accuracy": current.test_accuracy,
                  "actor": current.promoted_by, "note": "", "source": "cli", "reason": current.reason,
                  "production_before": left if keys.RUN_ID.fullmatch(left) else None,
                  "model_key": current.model_key, "model_sha256": current.model_sha256, "recorded_by": actor}
    return write_history(store, record, key)


def _read_for_update(store: ArtifactStore, force: bool) -> tuple[Production | None, str | None, bytes | None]:
    """(production, etag, the damaged bytes being replaced by --force)."""
    data, etag = read_production_raw(store)
    if data is None:
        return None, None, None
    try:
        return parse_production(data), etag, None
    except DamagedRegistry:
        if not force:
            raise
        return None, etag, data


def _candidate_record(candidate: Candidate, actor: str, note: str, source: str, min_accuracy: float,
                      summary: dict | None, extra: dict | None) -> dict:
    """What every history record about a candidate holds (`extra`: more fields, e.g. its approval)."""
    return {"run_id": candidate.run_id, "test_accuracy": candidate.test_accuracy, "actor": actor, "note": note,
            "source": source, "min_accuracy": min_accuracy, "model_key": candidate.model_key,
            "model_sha256": candidate.model_sha256, **({"run": summary} if summary else {}), **(extra or {})}


def promote(store: ArtifactStore, candidate: Candidate, *, min_accuracy: float,
            max_regression: float = DEFAULT_MAX_REGRESSION, allow_regression: bool = False, actor: str | None = None,
            note: str = "", source: str = "cli", summary: dict | None = None, force: bool = False,
            attempts: int = 5, min_new_data_accuracy: float | None = None, min_class_recall: float | None = None,
            extra: dict | None = None) -> PromotionResult:
    """Gate the candidate against the current production model and, if it passes, point
    production at it. Idempotent: promoting the run that is already production is a no-op.
    `force` replaces a damaged production.json or production model (keeping the damaged bytes
    in the history record) and skips the champion rule, never the threshold."""
    actor = actor or default_actor()
    base = dict(_candidate_record(candidate, actor, note, source, min_accuracy, summary, extra),
                max_regression=max_regression, allow_regression=allow_regression,
                **({"min_class_recall": min_class_recall} if min_class_recall is not None else {}),
                **({"min_new_data_accuracy": min_new_data_accuracy, "new_data_accuracy": candidate.new_data_accuracy}
                   if min_new_data_accuracy is not None else {}))
    verified = False
    for _ in range(attempts):
        current, etag, damaged = _read_for_update(store, force)
        before = current.run_id if current else None
        if current and current.run_id == candidate.run_id:
            key = _ensure_recorded(store, current, dict(base, decision="promoted", reason=current.reason,
                                                        production_before=current.previous_run_id), actor)
            rules = gate(candidate.test_accuracy, min_accuracy, None, max_regression, allow_regression,
                         candidate.new_data_accuracy, min_new_data_accuracy, candidate.class_recall, min_class_recall)
            if not rules.promote:  # the rules asked for apply here too (the champion rule cannot)
                return PromotionResult(False, f"{candidate.run_id} is already in production, but "
                                       f"{rules.reason.removeprefix(BLOCKED)}", None, current.model_dump(), key)
            return PromotionResult(True, "already in production", None, current.model_dump(), key, already=True)
        champion = current
        if current and force:
            try:
                check_production_model(store, current)
            except DamagedRegistry:
                champion, damaged = None, damaged or json.dumps(current.model_dump()).encode()
        elif current:
            check_production_model(store, current)
        decision = gate(candidate.test_accuracy, min_accuracy, champion, max_regression, allow_regression,
                        candidate.new_data_accuracy, min_new_data_accuracy, candidate.class_recall, min_class_recall)
        if not decision.promote:
            key = write_history(store, dict(base, decision="blocked", reason=decision.reason,
                                            production_before=before))
            return PromotionResult(False, decision.reason, decision, current and current.model_dump(), key)
        if collected(store, candidate.run_id):  # every attempt: gc may have marked it meanwhile
            raise RegistryError(f"run {candidate.run_id}'s model was deleted by `mnist-pipeline gc`; "
                                "it cannot be promoted")
        if not verified:
            _verify_candidate_bytes(store, candidate)
            verified = True
        key = new_history_key(candidate.run_id)
        stack = _stack_after_promoting_over(champion) if champion else (list(current.stack) if current else [])
        record = Production(run_id=candidate.run_id, test_accuracy=candidate.test_accuracy,
                            model_key=candidate.model_key, model_sha256=candidate.model_sha256,
                            promoted_at=now().isoformat(), promoted_by=actor, reason=decision.reason,
                            previous_run_id=stack[-1].run_id if stack else None, stack=stack,
                            history_key=key)
        try:
            _write_production(store, record, etag)
        except PreconditionFailed:
            if not _landed(store, key):
                continue  # someone else changed production: decide again against the new champion
        warnings: list[str] = []
        extra = {"replaced_damaged_production": _keep_bytes(damaged)} if damaged else {}
        written = _record_after_write(store, dict(base, decision="promoted", reason=decision.reason,
                                                  production_before=before, **extra), key, warnings)
        return PromotionResult(True, decision.reason, decision, record.model_dump(), written, warnings=warnings)
    reason = f"{BLOCKED}production kept changing ({attempts} conditional writes refused)"
    key = write_history(store, dict(base, decision="blocked", reason=reason))
    return PromotionResult(False, reason, None, None, key)


def decline(store: ArtifactStore, candidate: Candidate, reason: str, *, min_accuracy: float, actor: str,
            note: str = "", source: str = "flow", summary: dict | None = None,
            extra: dict | None = None) -> PromotionResult:
    """Record a candidate that passed the gate but is not promoted (a person rejected it, or no
    one approved it in time): production is untouched, the decision is a blocked record."""
    current, _ = read_production(store)
    before = current.run_id if current else None
    key = write_history(store, dict(_candidate_record(candidate, actor, note, source, min_accuracy, summary, extra),
                                    decision="blocked", reason=reason, production_before=before))
    return PromotionResult(False, reason, None, current and current.model_dump(), key)


def _keep_bytes(data: bytes) -> dict:
    return {"sha256": sha256(data), "base64": base64.b64encode(data).decode()}


def _verify_candidate_bytes(store: ArtifactStore, candidate: Candidate) -> None:
    """Read the model back from the store: the bytes production will name must be the ones that
    were measured, and must load in safe mode (a Lambda layer is refused, never run)."""
    from mnist_pipeline.model import model_from_bytes

    data = verified_bytes(store, candidate.model_key, candidate.model_sha256, f"model of run {candidate.run_id}")
    model_from_bytes(data, candidate.model_key)


def rollback(store: ArtifactStore, *, min_accuracy: float, actor: str | None = None,
             note: str = "") -> PromotionResult:
    """Pop the rollback stack: production goes back to the model that was in production before
    the current one was promoted. Its bytes must match the hash recorded when it was promoted,
    load in safe mode, and score at least `min_accuracy` on the test set (measured now). The
    champion rule does not apply: going back to an earlier model is the point."""
    actor = actor or default_actor()
    current, etag = read_production(store)
    if current is None:
        raise RegistryError("nothing is in production; there is nothing to roll back")
    if not current.stack:
        raise RegistryError(f"production {current.run_id} has no earlier production model to roll back to "
                            "(rollback returns only to models that were in production before it)")
    target = current.stack[-1]
    data = verified_bytes(store, target.model_key, target.model_sha256, f"model of run {target.run_id}")
    accuracy = measure_on_test_set(store, data, target.model_key)
    base = {"run_id": target.run_id, "test_accuracy": accuracy, "actor": actor, "note": note, "source": "cli",
            "min_accuracy": min_accuracy, "production_before": current.run_id,
            "model_key": target.model_key, "model_sha256": target.model_sha256}
    if accuracy < min_accuracy:
        reason = f"rollback blocked: {target.run_id} scores {accuracy:.4f} < {min_accuracy:.4f}"
        key = write_history(store, dict(base, decision="blocked", reason=reason))
        return PromotionResult(False, reason, None, current.model_dump(), key)
    stack = list(current.stack[:-1])
    key = new_history_key(target.run_id)
    record = Production(run_id=target.run_id, test_accuracy=accuracy, model_key=target.model_key,
                        model_sha256=target.model_sha256, promoted_at=now().isoformat(), promoted_by=actor,
                        reason=f"{ROLLBACK_FROM}{current.run_id}", stack=stack,
                        previous_run_id=stack[-1].run_id if stack else None, history_key=key)
    try:
        _write_production(store, record, etag)
    except PreconditionFailed:
        if not _landed(store, key):
            raise RegistryError("production changed while rolling back; nothing was changed, "
                                "check `mnist-pipeline history` and retry") from None
    warnings: list[str] = []
    written = _record_after_write(store, dict(base, decision="rollback", reason=record.reason), key, warnings)
    return PromotionResult(True, record.reason, None, record.model_dump(), written, warnings=warnings)
