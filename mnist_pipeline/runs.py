"""Finding runs in the store, newest first, at a cost that does not grow with their number.

The index is the registry's history: its keys sort in time order and name the run
(`registry/history/<UTC time>-<run_id>.json`), and a run's first record is its own flow's
decision, carrying a summary (started, model, epochs, accuracy). So the newest page of runs is
two listings (run folders, history keys) plus one GET per run shown. Nothing is the only truth:
a run folder without a history record (a run that never reached its decision, a restored or
synthetic run) still shows, read from its manifest or its files.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mnist_pipeline import keys, registry
from mnist_pipeline.errors import NotFoundInStore, PipelineError, StoreError
from mnist_pipeline.store import ArtifactStore

log = logging.getLogger("mnist_pipeline.runs")


@dataclass
class RunSummary:
    run_id: str
    time: datetime  # when it was decided (or last written, for a run that was not)
    started_at: str | None = None
    model: str | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    decision: str = "incomplete"  # promoted | blocked | incomplete
    reason: str = ""
    production: bool = False
    new_data_accuracy: float | None = None  # on the ingested holdout images (none ingested: None)
    production_new_data_accuracy: float | None = None  # production's model before, on the same images

    def to_json(self) -> dict:
        return dict(asdict(self), time=self.time.isoformat())


def valid_run_id(name: str) -> bool:
    return bool(keys.RUN_ID.match(name))


def run_folders(store: ArtifactStore, prefix: str = "") -> list[str]:
    """Run ids under runs/ (optionally starting with `prefix`); foreign names are skipped with a
    warning (a key like runs/../x, written by something else)."""
    names = store.list_children(keys.RUNS + prefix)
    for bad in (n for n in names if not valid_run_id(n)):
        log.warning("skipped %s%s/: not a run id", keys.RUNS, bad)
    return [n for n in names if valid_run_id(n)]


def no_runs_error(store: ArtifactStore) -> PipelineError:
    return PipelineError(f"no runs in {store.url} yet; run `python flows/train_flow.py` first")


def resolve_run(store: ArtifactStore, prefix: str) -> str:
    """A run id, or a unique prefix of one (like git): one listing of the matching folders."""
    if not valid_run_id(prefix):
        raise PipelineError(f"{prefix!r} is not a run id; list runs with `mnist-pipeline runs`")
    if store.exists(keys.manifest(prefix)):  # a whole id of a finished run: no listing
        return prefix
    matches = run_folders(store, prefix)
    if prefix in matches:
        return prefix
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if not run_folders(store):
            raise no_runs_error(store)
        raise PipelineError(f"run {prefix!r} not found in {store.url}; list runs with `mnist-pipeline runs`")
    raise PipelineError(f"run prefix {prefix!r} is ambiguous ({len(matches)} runs); give more characters")


def why_missing(store: ArtifactStore, run_id: str, key: str) -> str:
    """Why a run's file is not in the store, for the error that names it."""
    try:
        if key in registry.collected_files(store, run_id):
            return "`mnist-pipeline gc` collected it"
    except PipelineError:  # a damaged gc mark: verify names it; here it only explains
        pass
    if store.exists(keys.manifest(run_id)):  # the manifest is a run's last file
        return "the run finished, so it was deleted since; `mnist-pipeline verify` audits the store"
    return "the run did not finish"


def _json(store: ArtifactStore, key: str) -> dict | None:
    try:
        value = json.loads(store.get(key))
    except NotFoundInStore:
        return None
    except ValueError:
        log.warning("skipped %s: not JSON", key)
        return None
    except StoreError as exc:  # not readable (a FIFO at that key, no permission): the rest still lists
        log.warning("%s; skipped", exc)
        return None
    return value if isinstance(value, dict) else None


def _parse_time(text: object) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _from_manifest(run_id: str, manifest: dict, summary: RunSummary) -> RunSummary:
    params = manifest.get("parameters") or {}
    gate = manifest.get("gate") or {}
    summary.started_at = summary.started_at or manifest.get("started_at")
    summary.model = summary.model or params.get("model")
    summary.epochs = summary.epochs or params.get("epochs")
    if summary.test_accuracy is None:
        summary.test_accuracy = manifest.get("test_accuracy")
    if summary.decision == "incomplete" and gate:
        summary.decision = "promoted" if gate.get("promoted") else "blocked"
        summary.reason = gate.get("reason", "")
    return summary


def _indexed_summary(store: ArtifactStore, run_id: str, key: str) -> RunSummary:
    return _summary_from(store, run_id, key, registry.read_history_record(store, key))


def _summary_from(store: ArtifactStore, run_id: str, key: str, record: registry.HistoryRecord) -> RunSummary:
    run = getattr(record, "run", None) or {}
    summary = RunSummary(run_id, registry.history_key_time(key) or datetime.min.replace(tzinfo=timezone.utc),
                         run.get("started_at"), run.get("model"), run.get("epochs"), record.test_accuracy,
                         "promoted" if record.decision == "promoted" else "blocked", record.reason)
    new_data = run.get("new_data") or {}
    summary.new_data_accuracy = new_data.get("accuracy")
    summary.production_new_data_accuracy = (new_data.get("production_before") or {}).get("accuracy")
    if not run:  # a record made outside the flow (or before summaries): the manifest has the rest
        _from_manifest(run_id, _json(store, keys.manifest(run_id)) or {}, summary)
    return summary


def _unindexed_summary(store: ArtifactStore, run_id: str) -> RunSummary | None:
    """A run folder the history does not know: read its manifest, else its files' times (listed
    first: what is at a key but is not a file, a FIFO, is skipped there with a warning)."""
    files = store.list_objects(keys.run_prefix(run_id))
    key = keys.manifest(run_id)
    manifest = _json(store, key) if any(f.key == key for f in files) else None
    if manifest is not None:
        moment = _parse_time(manifest.get("finished_at") or manifest.get("started_at"))
        if moment:
            return _from_manifest(run_id, manifest, RunSummary(run_id, moment))
    if not files:
        log.warning("skipped %s%s/: no run files in it", keys.RUNS, run_id)
        return None
    summary = RunSummary(run_id, max(f.modified for f in files), reason="no manifest: the run did not finish")
    return _from_manifest(run_id, manifest or {}, summary)


def run_order(store: ArtifactStore) -> list[tuple[datetime, str, str | RunSummary]]:
    """Every run as (time, run_id, its first history key, or its summary when the history does
    not know it), newest first."""
    with ThreadPoolExecutor(2) as pool:  # the two listings are independent: overlap them
        folders_future = pool.submit(run_folders, store)
        keys = registry.history_keys(store)
        folders = set(folders_future.result())
    first_key: dict[str, str] = {}
    for key in keys:
        run_id = registry.history_key_run_id(key)
        if run_id in folders:
            first_key.setdefault(run_id, key)
    order = [(registry.history_key_time(k), r, k) for r, k in first_key.items()]
    unindexed = sorted(folders - set(first_key))
    for run_id in unindexed:
        summary = _unindexed_summary(store, run_id)
        if summary:
            order.append((summary.time, run_id, summary))
    order.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return order


def is_flow_decision(record: registry.HistoryRecord) -> bool:
    """The run's own flow decided (not a later `promote` or `rollback` of it)."""
    return record.source == "flow" or record.actor.startswith("flow-run:")


def newest_decided_runs(store: ArtifactStore, limit: int) -> tuple[list[RunSummary], bool]:
    """The newest `limit` runs that reached their decision, newest first, read from the tail of
    the history only (a few short listings and one GET per record read, whatever the number of
    runs), and whether that is all of them."""
    summaries: list[RunSummary] = []
    seen: set[str] = set()
    for key in registry.history_keys_newest_first(store):
        if len(summaries) == limit:
            return summaries, False
        run_id = registry.history_key_run_id(key)
        if run_id in seen:
            continue
        record = registry.read_history_record(store, key)
        if is_flow_decision(record):
            seen.add(run_id)
            summaries.append(_summary_from(store, run_id, key, record))
    return summaries, True


def newest_runs(store: ArtifactStore, limit: int | None) -> tuple[list[RunSummary], bool]:
    """The newest `limit` runs, newest first, and whether that is all of them. With a limit, the
    runs that reached a decision (the history's tail); without one (`--all`), every run folder,
    including runs that never reached a decision and folders the history does not know."""
    if limit is not None:
        summaries, complete = newest_decided_runs(store, limit)
    else:
        order = run_order(store)
        summaries = [_indexed_summary(store, run_id, key) if isinstance(key, str) else key
                     for _, run_id, key in order]
        complete = True
    production, _ = registry.read_production(store)
    for summary in summaries:
        summary.production = bool(production and production.run_id == summary.run_id)
    return summaries, complete
