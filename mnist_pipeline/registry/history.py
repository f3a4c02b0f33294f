"""The history of decisions: one create-only record per decision under registry/history/,
named `<UTC time>-<run_id>.json` so that the keys sort in time order. That order makes the
history the run index: the newest page is a few short listings, whatever its length."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime, timedelta, timezone

from mnist_pipeline import keys
from mnist_pipeline.errors import PipelineError, PreconditionFailed, RegistryError
from mnist_pipeline.redaction import redact
from mnist_pipeline.registry.schema import HistoryRecord, parse_history_record
from mnist_pipeline.store import ArtifactStore

# How far back each listing of the newest records reaches before the next, longer one: a page of
# the newest costs a few short listings whatever the size of the history.
TAIL_WINDOWS_DAYS = (2, 14, 90, 365, 3650)
_STAMP_LEN = 23  # len("20261204T163500.123456Z")


def now() -> datetime:
    return datetime.now(timezone.utc)


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "unknown"


def new_history_key(run_id: str) -> str:
    return keys.history_record(now().strftime(keys.HISTORY_TIME_FORMAT), run_id)


def history_key_time(key: str) -> datetime | None:
    """The UTC time in a history key."""
    try:
        stamp = key[len(keys.HISTORY):][:_STAMP_LEN]
        return datetime.strptime(stamp, keys.HISTORY_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def history_key_run_id(key: str) -> str | None:
    name = key[len(keys.HISTORY):]
    if not name.endswith(".json") or len(name) < _STAMP_LEN + 7 or name[_STAMP_LEN] != "-":
        return None
    run_id = name[_STAMP_LEN + 1:-5]
    return run_id if keys.RUN_ID.match(run_id) else None


def write_history(store: ArtifactStore, record: dict, key: str | None = None) -> str:
    """One create-only record per decision; a key that clashes gets a new timestamp, unless it is
    the given one (which production.json names) and holds this decision already, written by a
    retry racing this one: then the decision is not recorded twice."""
    for _ in range(5):
        given = key is not None
        key = key or new_history_key(record["run_id"])
        body = dict(_redacted(record), recorded_at=key[len(keys.HISTORY):][:_STAMP_LEN])
        try:
            store.put_if_absent(key, json.dumps(body, indent=2).encode())
            return key
        except PreconditionFailed:
            if given and _holds_decision(store, key, record):
                return key
            key = None
    raise RegistryError("could not write a unique history record")


def _redacted(value):
    """Every text in a record redacted: a --reason or an approver's note is typed by a person and
    may name a URL with its password or token; the dashboard and `history` show it to everyone."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _holds_decision(store: ArtifactStore, key: str, record: dict) -> bool:
    try:
        found = read_history_record(store, key)
    except PipelineError:  # not there after all, or not a record
        return False
    return (found.run_id, found.decision) == (record["run_id"], record["decision"])


def history_keys(store: ArtifactStore, since: datetime | None = None) -> list[str]:
    """History keys (those recorded after `since`, or all), oldest first: one listing, 1,000
    keys a request on S3; with `since`, only the tail of it."""
    start = keys.HISTORY + since.strftime(keys.HISTORY_TIME_FORMAT) if since else None
    return [k for k in store.list_names(keys.HISTORY, ".json", start) if history_key_run_id(k)]


def history_keys_newest_first(store: ArtifactStore):
    """Every history key, newest first, listing only as far back as the caller reads."""
    moment, seen = now(), None
    for days in (*TAIL_WINDOWS_DAYS, None):
        found = history_keys(store, moment - timedelta(days=days)) if days else history_keys(store)
        fresh = found if seen is None else [k for k in found if k < seen]
        yield from reversed(fresh)
        if found:
            seen = found[0]


def newest_history_keys(store: ArtifactStore, limit: int) -> tuple[list[str], bool]:
    """The newest `limit` history keys, oldest first, and whether they are all there are."""
    found = []
    for key in history_keys_newest_first(store):
        if len(found) == limit:
            return found[::-1], False
        found.append(key)
    return found[::-1], True


def read_history_record(store: ArtifactStore, key: str) -> HistoryRecord:
    return parse_history_record(key, store.get(key))


def read_history(store: ArtifactStore, limit: int | None = None) -> list[dict]:
    """The newest `limit` decisions (all when None), oldest first, each with its "key"."""
    found = history_keys(store)
    if limit is not None:
        found = found[-limit:] if limit else []
    return [dict(read_history_record(store, k).model_dump(), key=k) for k in found]
