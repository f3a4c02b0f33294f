"""`mnist-pipeline verify`: audit the store, one line per problem.

Checked: production.json is well formed and names a finished run whose model matches its hash
and loads in safe mode; every model on the rollback stack matches its hash; every history record
is well formed, and replaying them gives the production and stack that production.json holds;
the cached MNIST files match their pinned SHA-256 (promotion, rollback and compare score on
them), and the test set is cached once there are runs; each ingested dataset version's images
match its manifest (SHA-256, counts per digit), no images are orphaned by an ingest that died, and
the versions production and its rollback stack were trained on are there, unchanged; each run's files are the ones its
manifest lists (size always; the S3 ETag where the listing has it; SHA-256 of small files on a
folder store; SHA-256 of everything with `deep`), and its stored predictions score the accuracy
its manifest records; a run without manifest is reported once it is an interrupted run
(mnist_pipeline/retention.py), and no more once gc has collected it; no stale temporary files,
no foreign objects, nothing that is not a regular file.

Reads run in a thread pool, so 5,000 runs cost seconds, not minutes, on a real S3 endpoint.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mnist_pipeline import data_versions, keys, registry, retention
from mnist_pipeline.dataset import FILES, LABELS_MAGIC, cached_file, parse_idx
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.runs import valid_run_id
from mnist_pipeline.store import ArtifactStore, ObjectInfo

SMALL_FILE = 1 << 20  # hashed on a folder store even without --deep: reading them is cheap
KNOWN_TOP = keys.TOP_LEVEL
TEST_LABELS = "t10k-labels-idx1-ubyte"
NEEDED_BY_PROMOTION = ("t10k-images-idx3-ubyte", TEST_LABELS)
RUN_EXTRAS = ("manifest.json", "history.json", keys.COLLECTED)  # not listed in the manifest
RUN_EXTRA_FOLDERS = ("tuning/",)  # a tune run's trials and search report (flows/tune_flow.py)


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n


def _pool_map(fn, items, workers: int = 16):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _safe(fn, *args):
    try:
        return fn(*args), None
    except PipelineError as exc:
        return None, str(exc)


def check_production(store: ArtifactStore, audit: Audit) -> tuple[registry.Production | None, bool]:
    """Production (None when there is none) and whether production.json could be read at all."""
    production, error = _safe(lambda: registry.read_production(store)[0])
    if error:
        audit.problems.append(error)
        return None, False
    if production is None:
        return None, True
    audit.count("production")
    _, error = _safe(registry.read_manifest, store, production.run_id)
    if error:
        audit.problems.append(f"{keys.PRODUCTION} names run {production.run_id}, but {error}")
    data, error = _safe(registry.verified_bytes, store, production.model_key, production.model_sha256,
                        "production model")
    if error:
        audit.problems.append(error)
    else:
        from mnist_pipeline.model import model_from_bytes

        _, error = _safe(model_from_bytes, data, production.model_key)
        if error:
            audit.problems.append(f"{production.model_key} (production model): {error}")
    for entry in production.stack:
        audit.count("rollback stack models")
        _, error = _safe(registry.verified_bytes, store, entry.model_key, entry.model_sha256,
                         "a model rollback can return to")
        if error:
            audit.problems.append(error)
    if production.history_key and not store.exists(production.history_key):
        audit.problems.append(f"{keys.PRODUCTION} names its history record {production.history_key}, "
                              "which is missing")
    return production, True


def replay(records: list[registry.HistoryRecord]) -> tuple[str | None, list[str]]:
    """Production and its rollback stack, as the decisions in history say they should be."""
    current, stack = None, []
    for record in records:
        if record.decision == "promoted":
            replaced = getattr(record, "replaced_damaged_production", None)
            if replaced:  # `promote --force` kept the damaged production's stack, if it could read one
                stack = _stack_of_damaged(replaced)
            elif current is not None and record.production_before is None:
                stack = []  # production.json was missing: that promotion started a new stack
            elif current is not None and record.run_id != current:
                stack = (stack + [current])[-registry.ROLLBACK_DEPTH:]
            current = record.run_id
        elif record.decision == "rollback":
            current, stack = record.run_id, stack[:-1]
    return current, stack


def _stack_of_damaged(kept: object) -> list[str]:
    """The rollback stack of the production.json that `promote --force` replaced, from the bytes
    its history record keeps, read as promotion read them: its stack carried over when they parse
    as a production record, none when they do not (registry/promotion.py `_read_for_update`)."""
    try:
        damaged = registry.parse_production(base64.b64decode(kept["base64"]))
    except (TypeError, KeyError, ValueError, PipelineError):
        return []
    return [entry.run_id for entry in damaged.stack]


def check_history(store: ArtifactStore, audit: Audit, production: registry.Production | None,
                  history_keys: list[str], production_readable: bool = True) -> None:
    good = [k for k in history_keys if registry.history_key_run_id(k)]
    audit.problems += [f"{k}: not a history record name (<UTC time>-<run id>.json)"
                       for k in history_keys if k not in good]
    results = _pool_map(lambda k: _safe(registry.read_history_record, store, k), good)
    audit.count("history records", len(good))
    records = []
    for key, (record, error) in zip(good, results):
        if error:
            audit.problems.append(error)
        elif record.run_id != registry.history_key_run_id(key):
            audit.problems.append(f"{key}: its run_id {record.run_id} is not the one in its name")
        else:
            records.append(record)
    if not production_readable or len(records) != len(good):
        return  # a damaged production.json is reported already; a chain with damaged links cannot be compared
    current, stack = replay(records)
    if production is None:
        if current is not None:
            audit.problems.append(f"{keys.PRODUCTION} is missing, but the history says {current} is in production "
                                  f"(rollback stack {stack}); `mnist-pipeline promote {current}` writes it again, with an empty "
                                  "rollback stack")
        return
    if current != production.run_id or stack != [e.run_id for e in production.stack]:
        audit.problems.append(
            f"{keys.PRODUCTION} names {production.run_id} with rollback stack "
            f"{[e.run_id for e in production.stack]}, but the history says {current} with {stack}")


def _file_problem(store: ArtifactStore, key: str, recorded: dict, listed: ObjectInfo | None,
                  collected: dict, deep: bool) -> str | None:
    if listed is None:
        return None if key in collected else f"{key}: missing (listed in its run's manifest)"
    if recorded.get("bytes") is not None and listed.size != recorded["bytes"]:
        return f"{key}: {listed.size:,} bytes, but its manifest recorded {recorded['bytes']:,}"
    if listed.etag and recorded.get("md5") and "-" not in listed.etag and listed.etag != recorded["md5"]:
        return f"{key}: its content changed since it was stored (ETag {listed.etag}, recorded MD5 {recorded['md5']})"
    # A folder has no ETag to compare: hash what is small, and every model (what promote checks)
    if deep or (listed.etag is None and (listed.size <= SMALL_FILE or key.endswith("/model.keras"))):
        actual = registry.sha256(store.get(key))
        if actual != recorded.get("sha256"):
            return f"{key}: SHA-256 {actual}, but its manifest recorded {recorded.get('sha256')}"
    return None


def check_dataset_cache(store: ArtifactStore, audit: Audit, objects: list[ObjectInfo], any_runs: bool):
    """Each cached MNIST file against its pinned SHA-256; the test labels when they verify (the
    accuracy checks use them), else None."""
    cached = {o.key for o in objects if o.key.startswith(keys.MNIST_CACHE)}
    expected = {keys.mnist_file(name): name for name in FILES}
    audit.problems += [f"{k}: a foreign object (not one of the four MNIST files)"
                       for k in sorted(cached - set(expected))]
    labels = None
    for key, name in expected.items():
        if key not in cached:
            if any_runs and name in NEEDED_BY_PROMOTION:
                audit.problems.append(f"{key}: missing; promote, rollback and compare score models on it "
                                      "(the next training run caches it again)")
            continue
        audit.count("cached MNIST files")
        try:
            raw = cached_file(store, name)
        except PipelineError as exc:
            audit.problems.append(str(exc))
            continue
        if name == TEST_LABELS:
            labels = parse_idx(name, raw, LABELS_MAGIC)
    return labels


def _accuracy_problem(store: ArtifactStore, run_id: str, manifest: dict, labels) -> str | None:
    """The manifest's test accuracy against what the run's stored predictions score: an edited
    accuracy is found without loading the model. A predictions file that cannot be read is named."""
    import numpy as np

    from mnist_pipeline.comparison import stored_predictions

    recorded = manifest.get("test_accuracy")
    try:
        predictions = stored_predictions(store, run_id)
    except PipelineError as exc:
        return str(exc)
    if labels is None or not isinstance(recorded, (int, float)):
        return None
    scored = float(np.mean(predictions == labels))
    if abs(scored - recorded) > 2e-4:
        return (f"{keys.manifest(run_id)} records test accuracy {recorded:.4f}, but the run's "
                f"stored predictions score {scored:.4f}")
    return None


def _unfinished_problem(run_id: str, unfinished: list[ObjectInfo]) -> list[str]:
    """A run without manifest: a problem once it is an interrupted run, until gc collects it
    (then its mark is all that is left); younger, it may still be running."""
    now = datetime.now(timezone.utc)
    if not retention.interrupted(unfinished, now):
        return []
    days = (now - max(f.modified for f in unfinished)).total_seconds() / 86400
    return [f"{keys.run_prefix(run_id)}: an interrupted run (no manifest.json, no file written for {days:.1f} days); "
            "`mnist-pipeline gc` deletes its files"]


def check_run(store: ArtifactStore, run_id: str, files: list[ObjectInfo], deep: bool, labels=None) -> list[str]:
    prefix = keys.run_prefix(run_id)
    listed = {f.key: f for f in files}
    unfinished = retention.unfinished_files(run_id, files)
    if unfinished is not None:
        return _unfinished_problem(run_id, unfinished)
    try:
        manifest = json.loads(store.get(prefix + "manifest.json"))
        recorded = manifest["files"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return [f"{prefix}manifest.json: damaged, or written before file hashes were recorded"]
    except PipelineError as exc:
        return [str(exc)]
    try:
        collected = registry.collected_files(store, run_id)
    except PipelineError as exc:
        return [str(exc)]
    problems = [p for key, rec in recorded.items()
                if (p := _file_problem(store, key, rec if isinstance(rec, dict) else {}, listed.get(key),
                                       collected, deep))]
    extra = [k for k in listed if k not in recorded and k[len(prefix):] not in RUN_EXTRAS
             and not k[len(prefix):].startswith(RUN_EXTRA_FOLDERS)]
    problems += [f"{k}: not listed in its run's manifest" for k in extra]
    predictions = f"{prefix}predictions.npy"
    if predictions in listed and not any(p.startswith(predictions) for p in problems):
        if problem := _accuracy_problem(store, run_id, manifest, labels):
            problems.append(problem)
    return problems


def check_runs(store: ArtifactStore, audit: Audit, deep: bool, objects: list[ObjectInfo], labels) -> None:
    by_run: dict[str, list[ObjectInfo]] = {}
    for info in objects:
        run_id = info.key[len(keys.RUNS):].split("/", 1)[0]
        if not valid_run_id(run_id) or "/" not in info.key[len(keys.RUNS):]:
            audit.problems.append(f"{info.key}: a foreign object (not under runs/<run id>/)")
            continue
        by_run.setdefault(run_id, []).append(info)
    results = _pool_map(lambda item: check_run(store, item[0], item[1], deep, labels), sorted(by_run.items()))
    audit.count("runs", len(by_run))
    for problems in results:
        audit.problems += problems


def check_data_versions(store: ArtifactStore, audit: Audit, objects: list[ObjectInfo],
                        production: registry.Production | None) -> None:
    versions, problems, checked = data_versions.audit(store, objects)
    audit.count("dataset versions", checked)
    audit.problems += problems
    if production is None:
        return
    stored = {v.version: v.images.sha256 for v in versions}
    for run_id in [production.run_id, *(e.run_id for e in production.stack)]:
        try:
            manifest, _ = registry.read_manifest(store, run_id)
        except PipelineError:
            continue  # reported by the production and run checks
        for used in manifest.get("data_versions") or []:
            number = used.get("version")
            if number in stored and stored[number] != used.get("sha256"):
                wrong = "holds other images than it"
            elif number not in stored and checked == len(versions):  # (a damaged one is reported above)
                wrong = "is missing"
            else:
                continue
            audit.problems.append(f"data version {number}, which run {run_id} (production or its rollback stack) "
                                  f"was trained on, {wrong}")


def verify(store: ArtifactStore, deep: bool = False) -> Audit:
    audit = Audit()
    everything = store.list_objects("", skipped=audit.problems)  # one listing, shared by the checks below
    production, readable = check_production(store, audit)
    history = [o.key for o in everything if o.key.startswith(keys.HISTORY)]
    check_history(store, audit, production, history, production_readable=readable)
    runs = [o for o in everything if o.key.startswith(keys.RUNS)]
    labels = check_dataset_cache(store, audit, everything, any_runs=bool(runs))
    check_runs(store, audit, deep, runs, labels)
    check_data_versions(store, audit, [o for o in everything if o.key.startswith(keys.INGESTED)], production)
    audit.problems += [f"{o.key}: a foreign object (not part of the store layout)"
                       for o in everything if not o.key.startswith(KNOWN_TOP)]
    audit.problems += [f"{key}: a stale temporary file (a writer died); `mnist-pipeline gc` removes it"
                       for key in store.stale_temp_files()]
    audit.problems = list(dict.fromkeys(audit.problems))  # two checks meeting one problem: one line
    return audit
