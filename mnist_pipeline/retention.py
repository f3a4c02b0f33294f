"""Retention (`mnist-pipeline gc`): delete the heavy files of old runs, keep the audit trail.

Deleted: a run's model.keras, predictions.npy and plots/ (the report embeds the plots). Kept
always: production, every model the rollback stack can return to, manifests, metrics, reports,
history records. A run is kept when it is among the newest `keep_last`, or (with `keep_days`)
younger than that.

An interrupted run (a run folder without manifest.json) has all its files deleted once none of
them has changed for INTERRUPTED_AFTER (or `keep_days`, when longer); until then it may still be
running. It takes no place among the newest `keep_last`, and `verify` says nothing of it once
gc has collected it.

Safe against a promotion at the same moment: gc first marks each run it will collect
(runs/<id>/collected.json), then bumps `gc_fence` in production.json with a conditional write,
then reads production again and deletes only what is still not production or on the stack. A
promotion that read production before the fence has its conditional write refused and decides
again, and then sees the mark; one that reads after the fence sees the mark. With nothing in
production there is nothing to fence, so models are kept (any of them may still be promoted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from mnist_pipeline import keys, registry
from mnist_pipeline.errors import PreconditionFailed, RegistryError
from mnist_pipeline.runs import run_order
from mnist_pipeline.store import ArtifactStore, ObjectInfo

HEAVY_NAMES = ("model.keras", "predictions.npy")
HEAVY_FOLDERS = ("plots/",)
# A run writes its manifest minutes after its first file (the trained model) and a tuning run a
# trial record every few minutes, so a run folder without manifest untouched this long is no
# longer running.
INTERRUPTED_AFTER = timedelta(days=1)


def unfinished_files(run_id: str, files: list[ObjectInfo]) -> list[ObjectInfo] | None:
    """A run folder's files when it has no manifest (gc's mark aside), None when it has one."""
    names = {f.key[len(keys.run_prefix(run_id)):] for f in files}
    if "manifest.json" in names:
        return None
    return [f for f in files if f.key != keys.collected(run_id)]


def interrupted(files: list[ObjectInfo], now: datetime, keep_days: float | None = None) -> bool:
    """Whether an unfinished run's files are old enough to be an interrupted run's."""
    quiet = max(INTERRUPTED_AFTER, timedelta(days=keep_days or 0))
    return bool(files) and max(f.modified for f in files) < now - quiet


def is_heavy(run_id: str, key: str, models_too: bool) -> bool:
    name = key[len(keys.run_prefix(run_id)):]
    if name == "model.keras":
        return models_too
    return name in HEAVY_NAMES or name.startswith(HEAVY_FOLDERS)


@dataclass
class Plan:
    collect: dict[str, list[ObjectInfo]] = field(default_factory=dict)  # run id -> files to delete
    kept: dict[str, str] = field(default_factory=dict)  # run id -> why it is kept
    models_kept: bool = False

    @property
    def bytes(self) -> int:
        return sum(f.size for files in self.collect.values() for f in files)


def protected_runs(production: registry.Production | None) -> dict[str, str]:
    if production is None:
        return {}
    kept = {entry.run_id: "rollback can return to it" for entry in production.stack}
    kept[production.run_id] = "production"
    return kept


def plan(store: ArtifactStore, keep_last: int, keep_days: float | None = None,
         now: datetime | None = None) -> Plan:
    now = now or datetime.now(timezone.utc)
    production, _ = registry.read_production(store)
    result = Plan(kept=protected_runs(production), models_kept=production is None)
    finished = 0
    for moment, run_id, indexed in run_order(store):
        files = None
        if not isinstance(indexed, str):  # a run the history does not know: did it finish?
            files = store.list_objects(keys.run_prefix(run_id))
            unfinished = unfinished_files(run_id, files)
            if unfinished is not None:
                if interrupted(unfinished, now, keep_days):
                    result.collect[run_id] = unfinished
                elif unfinished:
                    result.kept[run_id] = "unfinished: it may still be running"
                continue
        index, finished = finished, finished + 1
        if run_id in result.kept:
            continue
        if index < keep_last:
            result.kept[run_id] = f"among the newest {keep_last}"
            continue
        if keep_days is not None and moment > now - timedelta(days=keep_days):
            result.kept[run_id] = f"younger than {keep_days:g} days"
            continue
        files = store.list_objects(keys.run_prefix(run_id)) if files is None else files
        heavy = [f for f in files if is_heavy(run_id, f.key, models_too=production is not None)]
        if heavy:
            result.collect[run_id] = heavy
    return result


def _mark(store: ArtifactStore, run_id: str, files: list[ObjectInfo], actor: str) -> None:
    earlier = registry.collected_files(store, run_id)  # a second gc adds to the first one's list
    body = {"collected_at": datetime.now(timezone.utc).isoformat(), "by": actor,
            "files": {**earlier, **{f.key: f.size for f in files}}}
    store.put(keys.collected(run_id), json.dumps(body, indent=2).encode(),
              "application/json")


def _unmark(store: ArtifactStore, run_id: str, files: list[ObjectInfo]) -> None:
    left = {k: v for k, v in registry.collected_files(store, run_id).items() if k not in {f.key for f in files}}
    key = keys.collected(run_id)
    if left:
        store.put(key, json.dumps({"files": left}, indent=2).encode(), "application/json")
    else:
        store.delete(key)


def _fence(store: ArtifactStore) -> registry.Production | None:
    """Bump gc_fence in production.json (a conditional write): see the module docstring."""
    for _ in range(5):
        data, etag = registry.read_production_raw(store)
        if data is None:
            return None
        production = registry.parse_production(data)
        body = dict(production.model_dump(), gc_fence=datetime.now(timezone.utc).isoformat())
        try:
            store.put_if_match(keys.PRODUCTION, json.dumps(body, indent=2).encode(), etag)
        except PreconditionFailed:
            continue
        return registry.read_production(store)[0]
    raise RegistryError("production kept changing while gc was fencing it; nothing was deleted, retry")


def collect(store: ArtifactStore, todo: Plan, *, actor: str, echo=print) -> tuple[int, int]:
    """Delete what the plan says, after the fence; returns (files deleted, bytes freed)."""
    for run_id, files in todo.collect.items():
        _mark(store, run_id, files, actor)
    production = _fence(store) if not todo.models_kept else None
    still_protected = protected_runs(production)
    deleted = freed = 0
    for run_id, files in todo.collect.items():
        if run_id in still_protected:  # promoted between the plan and the fence: keep it all
            _unmark(store, run_id, files)
            echo(f"kept {run_id}: {still_protected[run_id]} (changed while gc ran)")
            continue
        for info in files:
            store.delete(info.key)
            deleted, freed = deleted + 1, freed + info.size
            echo(f"deleted {info.key} ({info.size:,} bytes)")
    return deleted, freed
