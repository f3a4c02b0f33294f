"""The model registry: `registry/production.json`, its rollback stack, and the history of decisions.

What promotion trusts (docs/registry.md):
- a model's bytes, checked against the SHA-256 recorded when they were stored (the run's
  manifest; production.json and its stack for models that were promoted);
- an accuracy measured on the bytes going into production: the flow's own evaluation of the model
  it just stored, or, for `promote` and `rollback`, the model run again on the verified test set.
  No file's word is taken for it, so editing metrics.json (or a manifest) promotes nothing.

production.json changes only by a conditional write (create-only when absent, If-Match
otherwise), after the model it will name has been read back, hash-checked and loaded in Keras
safe mode. It carries the rollback stack: the models that were in production before, newest
last, so a rollback pops one and never returns to a model that was rolled back. Every decision
gets one create-only record under registry/history/, written after the conditional write: the
promotion is the last thing that decides, and a failure after it is reported as what it is.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import re
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, ValidationError, model_validator

from mnist_pipeline.errors import (DamagedRegistry, NotFoundInStore, PipelineError, PreconditionFailed,
                                   RegistryError)
from mnist_pipeline.models import model_from_bytes
from mnist_pipeline.store import ArtifactStore

PRODUCTION_KEY = "registry/production.json"
HISTORY_PREFIX = "registry/history/"
ROLLBACK_DEPTH = 20  # promotions that rollback can undo; older models may be collected by gc
TOMBSTONE = "collected.json"  # runs/<id>/collected.json: gc deleted this run's heavy files
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # Prefect's are UUIDs
VERIFY_HINT = "run `mnist-pipeline verify` for the full picture"

RunId = Annotated[StrictStr, Field(pattern=RUN_ID.pattern)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Accuracy = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]


def model_key(run_id: str) -> str:
    return f"runs/{run_id}/model.keras"


def manifest_key(run_id: str) -> str:
    return f"runs/{run_id}/manifest.json"


class StackEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    run_id: RunId
    model_key: StrictStr
    model_sha256: Sha256
    test_accuracy: Accuracy


class Production(BaseModel):
    """registry/production.json."""

    model_config = ConfigDict(extra="allow", strict=True)
    run_id: RunId
    test_accuracy: Accuracy
    model_key: StrictStr
    model_sha256: Sha256
    promoted_at: StrictStr
    promoted_by: StrictStr = ""
    reason: StrictStr = ""
    previous_run_id: Optional[RunId] = None  # the top of the stack, for people reading the file
    stack: list[StackEntry] = []
    history_key: Optional[StrictStr] = None

    @model_validator(mode="after")
    def _model_key_is_the_runs(self):
        if self.model_key != model_key(self.run_id):
            raise ValueError(f"model_key {self.model_key!r} is not {model_key(self.run_id)!r}")
        return self

    def entry(self) -> StackEntry:
        return StackEntry(run_id=self.run_id, model_key=self.model_key,
                          model_sha256=self.model_sha256, test_accuracy=self.test_accuracy)


class HistoryRecord(BaseModel):
    """One decision under registry/history/."""

    model_config = ConfigDict(extra="allow", strict=True)
    decision: Literal["promoted", "blocked", "rollback"]
    run_id: RunId
    recorded_at: StrictStr
    test_accuracy: Optional[Accuracy] = None
    reason: StrictStr = ""
    actor: StrictStr = ""
    note: StrictStr = ""
    source: StrictStr = "cli"
    production_before: Optional[RunId] = None


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where + ': ' if where else ''}{err['msg']}"


def parse_production(data: bytes) -> Production:
    try:
        return Production.model_validate(json.loads(data))
    except json.JSONDecodeError as exc:
        raise DamagedRegistry(f"{PRODUCTION_KEY} is damaged: not JSON ({exc.msg} at byte {exc.pos}); "
                              f"{VERIFY_HINT}") from None
    except ValidationError as exc:
        raise DamagedRegistry(f"{PRODUCTION_KEY} is damaged: {_problem(exc)}; {VERIFY_HINT}") from None


def parse_history_record(key: str, data: bytes) -> HistoryRecord:
    try:
        return HistoryRecord.model_validate(json.loads(data))
    except json.JSONDecodeError as exc:
        raise DamagedRegistry(f"{key} is damaged: not JSON ({exc.msg} at byte {exc.pos}); {VERIFY_HINT}") from None
    except ValidationError as exc:
        raise DamagedRegistry(f"{key} is damaged: {_problem(exc)}; {VERIFY_HINT}") from None


# -- gate rules (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    min_accuracy: float
    production_run_id: str | None = None
    production_accuracy: float | None = None


def gate(accuracy: float, min_accuracy: float, production: Production | None,
         max_regression: float = 0.005, allow_regression: bool = False) -> GateDecision:
    """The promotion rules: the threshold always; the champion rule unless regression is allowed."""
    prod_id = production.run_id if production else None
    prod_acc = production.test_accuracy if production else None
    common = dict(min_accuracy=min_accuracy, production_run_id=prod_id, production_accuracy=prod_acc)
    if accuracy < min_accuracy:
        return GateDecision(False, f"promotion blocked: {accuracy:.4f} < {min_accuracy:.4f}", **common)
    if prod_acc is not None and accuracy < prod_acc - max_regression:
        if not allow_regression:
            return GateDecision(False, (
                f"promotion blocked: {accuracy:.4f} is below production {prod_id} "
                f"({prod_acc:.4f}) by more than {max_regression:g}"), **common)
        return GateDecision(True, (f"{accuracy:.4f} >= {min_accuracy:.4f}; regression from "
                                   f"{prod_acc:.4f} allowed on purpose"), **common)
    if prod_acc is None:
        versus = ""
    elif accuracy >= prod_acc:
        versus = f" and >= production {prod_acc:.4f}"
    else:
        versus = f" and within {max_regression:g} of production {prod_acc:.4f}"
    return GateDecision(True, f"{accuracy:.4f} >= {min_accuracy:.4f}{versus}", **common)


# -- reading --------------------------------------------------------------------------------------
def read_production_raw(store: ArtifactStore) -> tuple[bytes | None, str | None]:
    try:
        return store.get_with_etag(PRODUCTION_KEY)
    except NotFoundInStore:
        return None, None


def read_production(store: ArtifactStore) -> tuple[Production | None, str | None]:
    """production.json and its ETag; (None, None) when nothing is in production; DamagedRegistry
    (one line naming the object) when it is not what it should be."""
    data, etag = read_production_raw(store)
    return (parse_production(data) if data is not None else None), etag


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_bytes(store: ArtifactStore, key: str, expected_sha256: str, what: str) -> bytes:
    """The object's bytes if they are the ones recorded; DamagedRegistry naming the key and both
    hashes otherwise (a swapped or edited model is never used)."""
    try:
        data = store.get(key)
    except NotFoundInStore:
        raise DamagedRegistry(f"{key} ({what}) is missing from {store.url}; {VERIFY_HINT}") from None
    actual = sha256(data)
    if actual != expected_sha256:
        raise DamagedRegistry(f"{key} ({what}) has SHA-256 {actual}, but {expected_sha256} was recorded "
                              f"when it was stored: it was replaced or edited; {VERIFY_HINT}")
    return data


def check_production_model(store: ArtifactStore, production: Production) -> None:
    """The champion must be the model that was promoted: missing or different bytes are reported,
    never silently used to judge a candidate."""
    verified_bytes(store, production.model_key, production.model_sha256, f"production model of {production.run_id}")


def read_manifest(store: ArtifactStore, run_id: str) -> tuple[dict, str]:
    """A finished run's manifest and its SHA-256; RegistryError when the run did not finish."""
    try:
        data = store.get(manifest_key(run_id))
    except NotFoundInStore:
        raise RegistryError(f"run {run_id} is incomplete: it has no manifest (the run did not finish); "
                            "only finished runs can be promoted") from None
    try:
        manifest = json.loads(data)
        recorded = manifest["files"][model_key(run_id)]["sha256"]
        if not isinstance(recorded, str) or not isinstance(manifest["test_accuracy"], (int, float)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise DamagedRegistry(f"{manifest_key(run_id)} is damaged or predates model hashes (no "
                              f"files.{model_key(run_id)}.sha256 or test_accuracy); {VERIFY_HINT}") from None
    return manifest, sha256(data)


def collected_files(store: ArtifactStore, run_id: str) -> dict[str, int]:
    """Files `mnist-pipeline gc` deleted from this run (key -> bytes), from its mark."""
    try:
        mark = json.loads(store.get(f"runs/{run_id}/{TOMBSTONE}"))
        return dict(mark["files"])
    except NotFoundInStore:
        return {}
    except (ValueError, KeyError, TypeError):
        raise DamagedRegistry(f"runs/{run_id}/{TOMBSTONE} is damaged; {VERIFY_HINT}") from None


def collected(store: ArtifactStore, run_id: str) -> bool:
    return model_key(run_id) in collected_files(store, run_id)


# -- candidates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A stored model and the accuracy promotion may trust for it."""

    run_id: str
    model_sha256: str
    test_accuracy: float  # measured on these bytes, never read from a file

    @property
    def model_key(self) -> str:
        return model_key(self.run_id)


def measure_on_test_set(store: ArtifactStore, data: bytes, key: str) -> float:
    """Load in safe mode and score on the 10,000 verified test images from the store's cache."""
    from mnist_pipeline.dataset import load_test_images, load_test_labels
    from mnist_pipeline.models import measured_accuracy

    model = model_from_bytes(data, key)
    return measured_accuracy(model, load_test_images(store), load_test_labels(store))


def stored_candidate(store: ArtifactStore, run_id: str) -> Candidate:
    """A finished run's model, hash-checked against its manifest and measured on the test set.
    A manifest whose accuracy disagrees with what its model scores is refused as tampered."""
    manifest, _ = read_manifest(store, run_id)
    gone = collected_files(store, run_id)
    if model_key(run_id) in gone:
        raise RegistryError(f"run {run_id}'s model was deleted by `mnist-pipeline gc`; it cannot be promoted")
    missing = sorted(k for k in set(manifest["files"]) - set(gone) if not store.exists(k))
    if missing:
        raise RegistryError(f"run {run_id} is incomplete: {missing[0]} is missing"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {VERIFY_HINT}")
    key = model_key(run_id)
    data = verified_bytes(store, key, manifest["files"][key]["sha256"], f"model of run {run_id}")
    measured = measure_on_test_set(store, data, key)
    recorded = float(manifest["test_accuracy"])
    if abs(measured - recorded) > 2e-4:  # two images: float round-off at a tie, at most
        raise DamagedRegistry(
            f"{manifest_key(run_id)} records test accuracy {recorded:.4f}, but its model scores "
            f"{measured:.4f} on the 10,000 test images: the manifest was edited; {VERIFY_HINT}")
    return Candidate(run_id, sha256(data), measured)


# -- history --------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc)


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "unknown"


def new_history_key(run_id: str) -> str:
    return f"{HISTORY_PREFIX}{_now().strftime('%Y%m%dT%H%M%S.%fZ')}-{run_id}.json"


def history_key_time(key: str) -> datetime | None:
    """The UTC time in a history key (they sort in time order)."""
    try:
        return datetime.strptime(key[len(HISTORY_PREFIX):][:23], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def history_key_run_id(key: str) -> str | None:
    name = key[len(HISTORY_PREFIX):]
    if not name.endswith(".json") or len(name) < 30 or name[23] != "-":
        return None
    run_id = name[24:-5]
    return run_id if RUN_ID.match(run_id) else None


def write_history(store: ArtifactStore, record: dict, key: str | None = None) -> str:
    """One create-only record per decision; a same-microsecond clash gets a new timestamp."""
    for _ in range(5):
        key = key or new_history_key(record["run_id"])
        body = dict(record, recorded_at=key[len(HISTORY_PREFIX):][:23])
        try:
            store.put_if_absent(key, json.dumps(body, indent=2).encode())
            return key
        except PreconditionFailed:
            key = None
    raise RegistryError("could not write a unique history record")


def history_keys(store: ArtifactStore, since: datetime | None = None) -> list[str]:
    """History keys (those recorded after `since`, or all), oldest first: one listing, 1,000
    keys a request on S3; with `since`, only the tail of it (the keys sort in time order)."""
    start = f"{HISTORY_PREFIX}{since.strftime('%Y%m%dT%H%M%S.%fZ')}" if since else None
    return [k for k in store.list_names(HISTORY_PREFIX, ".json", start) if history_key_run_id(k)]


TAIL_WINDOWS_DAYS = (2, 14, 90, 365, 3650)


def history_keys_newest_first(store: ArtifactStore):
    """Every history key, newest first, listing only as far back as the caller reads: the last 2
    days, then 14, 90, ... (the keys sort in time order), so a page of the newest costs a few
    short listings whatever the size of the history."""
    now, seen = _now(), None
    for days in (*TAIL_WINDOWS_DAYS, None):
        keys = history_keys(store, now - timedelta(days=days)) if days else history_keys(store)
        fresh = keys if seen is None else [k for k in keys if k < seen]
        yield from reversed(fresh)
        if keys:
            seen = keys[0]


def newest_history_keys(store: ArtifactStore, limit: int) -> tuple[list[str], bool]:
    """The newest `limit` history keys, oldest first, and whether they are all there are."""
    keys = []
    for key in history_keys_newest_first(store):
        if len(keys) == limit:
            return keys[::-1], False
        keys.append(key)
    return keys[::-1], True


def read_history_record(store: ArtifactStore, key: str) -> HistoryRecord:
    return parse_history_record(key, store.get(key))


def read_history(store: ArtifactStore, limit: int | None = None) -> list[dict]:
    """The newest `limit` decisions (all when None), oldest first, each with its "key"."""
    keys = history_keys(store)
    if limit is not None:
        keys = keys[-limit:] if limit else []
    return [dict(read_history_record(store, k).model_dump(), key=k) for k in keys]


# -- decisions ------------------------------------------------------------------------------------
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
        store.put_if_absent(PRODUCTION_KEY, body)
    else:
        store.put_if_match(PRODUCTION_KEY, body, etag)


def _record_after_write(store: ArtifactStore, record: dict, key: str, warnings: list[str]) -> str | None:
    """Production has changed: whatever happens now, the decision stands. A history record that
    cannot be written is a warning (verify reports it), never a reason to say "failed"."""
    try:
        return write_history(store, record, key)
    except PipelineError as exc:
        warnings.append(f"production changed, but its history record {key} could not be written "
                        f"({exc}); run `mnist-pipeline verify`")
        return None


def _ensure_recorded(store: ArtifactStore, current: Production, record: dict) -> str | None:
    """A retry after production was written: its history record, if the first attempt died
    before writing it (its key is in production.json, so this costs one request)."""
    key = current.history_key
    if key and not store.exists(key):
        return write_history(store, record, key)
    return None


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


def promote(store: ArtifactStore, candidate: Candidate, *, min_accuracy: float,
            max_regression: float = 0.005, allow_regression: bool = False, actor: str | None = None,
            note: str = "", source: str = "cli", summary: dict | None = None, force: bool = False,
            attempts: int = 5) -> PromotionResult:
    """Gate the candidate against the current production model and, if it passes, point
    production at it. Idempotent: promoting the run that is already production is a no-op.
    `force` replaces a damaged production.json or production model (keeping the damaged bytes
    in the history record) and skips the champion rule, never the threshold."""
    actor = actor or default_actor()
    base = {"run_id": candidate.run_id, "test_accuracy": candidate.test_accuracy, "actor": actor,
            "note": note, "source": source, "min_accuracy": min_accuracy, "max_regression": max_regression,
            "allow_regression": allow_regression, "model_key": candidate.model_key,
            "model_sha256": candidate.model_sha256,
            **({"run": summary} if summary else {})}
    verified = False
    for _ in range(attempts):
        current, etag, damaged = _read_for_update(store, force)
        before = current.run_id if current else None
        if current and current.run_id == candidate.run_id:
            key = _ensure_recorded(store, current, dict(base, decision="promoted", reason=current.reason,
                                                        production_before=current.previous_run_id))
            if candidate.test_accuracy < min_accuracy:  # the threshold asked for applies here too
                return PromotionResult(False, f"{candidate.run_id} is already in production, but "
                                       f"{candidate.test_accuracy:.4f} < {min_accuracy:.4f}", None,
                                       current.model_dump(), key)
            return PromotionResult(True, "already in production", None, current.model_dump(), key, already=True)
        champion = current
        if current and force:
            try:
                check_production_model(store, current)
            except DamagedRegistry:
                champion, damaged = None, damaged or json.dumps(current.model_dump()).encode()
        elif current:
            check_production_model(store, current)
        decision = gate(candidate.test_accuracy, min_accuracy, champion, max_regression, allow_regression)
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
                            promoted_at=_now().isoformat(), promoted_by=actor, reason=decision.reason,
                            previous_run_id=stack[-1].run_id if stack else None, stack=stack,
                            history_key=key)
        try:
            _write_production(store, record, etag)
        except PreconditionFailed:
            continue  # someone else changed production: decide again against the new champion
        warnings: list[str] = []
        extra = {"replaced_damaged_production": _keep_bytes(damaged)} if damaged else {}
        written = _record_after_write(store, dict(base, decision="promoted", reason=decision.reason,
                                                  production_before=before, **extra), key, warnings)
        return PromotionResult(True, decision.reason, decision, record.model_dump(), written, warnings=warnings)
    reason = f"promotion blocked: production kept changing ({attempts} conditional writes refused)"
    key = write_history(store, dict(base, decision="blocked", reason=reason))
    return PromotionResult(False, reason, None, None, key)


def _keep_bytes(data: bytes) -> dict:
    return {"sha256": sha256(data), "base64": base64.b64encode(data).decode()}


def _verify_candidate_bytes(store: ArtifactStore, candidate: Candidate) -> None:
    """Read the model back from the store: the bytes production will name must be the ones that
    were measured, and must load in safe mode (a Lambda layer is refused, never run)."""
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
                        model_sha256=target.model_sha256, promoted_at=_now().isoformat(), promoted_by=actor,
                        reason=f"rollback from {current.run_id}", stack=stack,
                        previous_run_id=stack[-1].run_id if stack else None, history_key=key)
    try:
        _write_production(store, record, etag)
    except PreconditionFailed:
        raise RegistryError("production changed while rolling back; nothing was changed, "
                            "check `mnist-pipeline history` and retry") from None
    warnings: list[str] = []
    written = _record_after_write(store, dict(base, decision="rollback", reason=record.reason), key, warnings)
    return PromotionResult(True, record.reason, None, record.model_dump(), written, warnings=warnings)
