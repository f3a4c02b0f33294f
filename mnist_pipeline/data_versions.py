"""Ingested dataset versions: labelled digits from elsewhere, beside MNIST, each version immutable.

    datasets/ingested/images/<sha256>.npy       a version's images and labels (RECORD rows)
    datasets/ingested/versions/<NNNNNN>.json    its manifest: counts per digit, hashes, note, time, source

A version appears only when complete: its images are written first, under the key that only those
bytes can have (their SHA-256), then its manifest with a conditional create (If-None-Match: *, a
hard link on a folder). Two ingests at once both succeed: the one whose create is refused takes
the next number. A crash leaves no version, at most images that no manifest names: `verify`
reports them once they are an hour old (younger, an ingest may still be writing its manifest) and
`gc` deletes them. Versions themselves are never deleted: they are small, and runs name them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from numpy.lib import format as npy_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mnist_pipeline import keys
from mnist_pipeline.errors import DatasetError, NotFoundInStore, PipelineError
from mnist_pipeline.run_inputs import ranges
from mnist_pipeline.store import ArtifactStore, ObjectInfo, file_record

log = logging.getLogger("mnist_pipeline.data_versions")

INGESTED_EVENT = "mnist.data.ingested"  # emitted by `mnist-pipeline ingest`; the deployments trigger on it
# One row per image: its label, whether it is in the holdout (never trained on), its prepared
# pixels as `predict` prepares images (mnist_pipeline/digits.py), white on black, 0-255.
RECORD = np.dtype([("label", "u1"), ("holdout", "?"), ("image", "u1", (28, 28))])
ORPHAN_AFTER = timedelta(hours=1)  # images no manifest names, this old, belong to an ingest that died
VERIFY_HINT = "run `mnist-pipeline verify`"


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    train: list[int] = Field(min_length=10, max_length=10)  # images of each digit, 0-9
    holdout: list[int] = Field(min_length=10, max_length=10)


class Images(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    md5: str
    bytes: int


class VersionManifest(BaseModel):
    """datasets/ingested/versions/<NNNNNN>.json."""

    model_config = ConfigDict(extra="allow")  # readers of older code ignore newer fields
    version: int = Field(ge=1)
    created_at: str
    created_by: str  # user@host
    source: str  # the folder or CSV ingested, as an absolute path
    note: str = ""
    holdout_fraction: float = Field(ge=0.0, le=1.0)
    seed: int
    images: Images
    counts: Counts
    skipped: dict[str, int] = {}  # why files were left out -> how many

    @property
    def train_images(self) -> int:
        return sum(self.counts.train)

    @property
    def holdout_images(self) -> int:
        return sum(self.counts.holdout)

    @property
    def total(self) -> int:
        return self.train_images + self.holdout_images

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), indent=2).encode()

    def reference(self) -> dict:
        """What a run's manifest records of a version it used."""
        return {"version": self.version, "sha256": self.images.sha256, "train": self.train_images,
                "holdout": self.holdout_images}


# -- the images file ------------------------------------------------------------------------------
def encode(records: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(records, dtype=RECORD), allow_pickle=False)
    return buf.getvalue()


def decode(data: bytes, key: str, rows: int) -> np.ndarray:
    """The RECORD rows of a version's images file, its header checked against the rows its
    manifest records and the bytes there are before anything is allocated."""
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
        shape, fortran, dtype = read_header[version](stream)
    except (ValueError, KeyError, SyntaxError):
        raise DatasetError(f"{key} is not a NumPy array file; {VERIFY_HINT}") from None
    if dtype != RECORD or shape != (rows,) or fortran:
        raise DatasetError(f"{key} holds {shape} of {dtype}, not the {rows:,} images its version's manifest "
                           f"records; {VERIFY_HINT}")
    expected = stream.tell() + rows * RECORD.itemsize
    if len(data) != expected:
        raise DatasetError(f"{key} is {len(data):,} bytes, not the {expected:,} its header announces: "
                           f"truncated or damaged; {VERIFY_HINT}")
    return np.frombuffer(data, RECORD, count=rows, offset=stream.tell())


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each prepared 28x28 image's pixels: what deduplication compares."""
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    return [hashlib.sha256(row).hexdigest() for row in flat]


def counts_of(records: np.ndarray) -> Counts:
    def per_digit(rows):
        return np.bincount(rows["label"], minlength=10).astype(int).tolist()
    return Counts(train=per_digit(records[~records["holdout"]]), holdout=per_digit(records[records["holdout"]]))


# -- reading versions -----------------------------------------------------------------------------
def parse_version(key: str, data: bytes) -> VersionManifest:
    try:
        manifest = VersionManifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not JSON"
        raise DatasetError(f"{key} is damaged ({problem}); {VERIFY_HINT}") from None
    if manifest.version != keys.data_version_of(key) or manifest.images.key != keys.data_images(manifest.images.sha256):
        raise DatasetError(f"{key} is damaged (its version or images key is not its own); {VERIFY_HINT}")
    return manifest


def version_keys(store: ArtifactStore) -> list[str]:
    """The version manifests' keys, in version order (one listing); foreign names are skipped."""
    return [k for k in store.list_names(keys.DATA_VERSIONS, ".json") if keys.data_version_of(k)]


def list_versions(store: ArtifactStore) -> list[VersionManifest]:
    """Every version, oldest first: one listing, then the manifests read in parallel."""
    found = version_keys(store)
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda key: parse_version(key, store.get(key)), found))


def select(store: ArtifactStore, up_to: int | None) -> list[VersionManifest]:
    """The versions a run learns from: every one (`up_to` None), or versions 1..up_to (0: none)."""
    if up_to == 0:
        return []
    versions = list_versions(store)
    if up_to is None:
        return versions
    latest = versions[-1].version if versions else 0
    if up_to > latest:
        raise DatasetError(f"data_version {up_to}: the store {store.url} has "
                           f"{ranges([v.version for v in versions]) if versions else 'no ingested version'}; "
                           "`mnist-pipeline data` lists them")
    return [v for v in versions if v.version <= up_to]


def load(store: ArtifactStore, manifest: VersionManifest) -> np.ndarray:
    """A version's RECORD rows, their bytes checked against the SHA-256 its manifest records."""
    key = manifest.images.key
    try:
        data = store.get(key)
    except NotFoundInStore:
        raise DatasetError(f"{key} (the images of data version {manifest.version}) is missing from "
                           f"{store.url}; {VERIFY_HINT}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.images.sha256:
        raise DatasetError(f"{key} (data version {manifest.version}) has SHA-256 {actual}, but its manifest "
                           f"records {manifest.images.sha256}: replaced or damaged; {VERIFY_HINT}")
    return decode(data, key, manifest.total)


def read_version(store: ArtifactStore, reference: dict) -> VersionManifest:
    """The version a run's manifest names (`reference`), its images the ones that run used."""
    number = reference["version"]
    key = keys.data_version(number)
    try:
        manifest = parse_version(key, store.get(key))
    except NotFoundInStore:
        raise DatasetError(f"data version {number}, which the run learned from, is missing from {store.url}; "
                           f"{VERIFY_HINT}") from None
    if manifest.images.sha256 != reference["sha256"]:
        raise DatasetError(f"data version {number} has images {manifest.images.sha256[:12]}, but the run learned "
                           f"from {reference['sha256'][:12]}: replaced; {VERIFY_HINT}")
    return manifest


@dataclass(frozen=True)
class Holdout:
    """Versions' holdout images, never trained on: uint8 28x28, labels, and each image's version."""

    images: np.ndarray
    labels: np.ndarray
    versions: np.ndarray


def holdout_of(loaded: list[tuple[VersionManifest, np.ndarray]]) -> Holdout:
    """The holdout rows of versions already loaded (`load`), in version order."""
    held = [(v, rows[rows["holdout"]]) for v, rows in loaded]
    return Holdout(np.concatenate([r["image"] for _, r in held]),
                   np.concatenate([r["label"] for _, r in held]),
                   np.concatenate([np.full(len(r), v.version, np.int32) for v, r in held]))


# -- writing a version ----------------------------------------------------------------------------
def publish(store: ArtifactStore, records: np.ndarray, version: int, **meta) -> VersionManifest:
    """Store `records` as data version `version`: the images first, then the manifest, created
    only if that version does not exist yet (PreconditionFailed otherwise: another ingest took
    the number; the caller decides again against it)."""
    data = encode(records)
    record = file_record(data)
    key = keys.data_images(record["sha256"])
    store.put(key, data, "application/octet-stream")
    manifest = VersionManifest(version=version, images=Images(key=key, **record), counts=counts_of(records), **meta)
    store.put_if_absent(keys.data_version(version), manifest.to_bytes())
    return manifest


# -- the audit and retention ----------------------------------------------------------------------
def orphans(objects: list[ObjectInfo], versions: list[VersionManifest],
            now: datetime | None = None) -> list[ObjectInfo]:
    """Images files no version names that have not changed for ORPHAN_AFTER: an ingest died
    between its images and its manifest."""
    now = now or datetime.now(timezone.utc)
    named = {v.images.key for v in versions}
    return [o for o in objects if keys.is_data_images(o.key) and o.key not in named and o.modified < now - ORPHAN_AFTER]


def collectable_orphans(store: ArtifactStore) -> list[ObjectInfo]:
    """The orphaned images `gc` may delete; DatasetError while a version's manifest does not read
    (the images it names would look orphaned)."""
    return orphans(store.list_objects(keys.DATA_IMAGES), list_versions(store))


def audit(store: ArtifactStore, objects: list[ObjectInfo]) -> tuple[list[VersionManifest], list[str], int]:
    """(the versions that read, one line per problem, how many were checked): each version's
    manifest well formed; its images present, their SHA-256 and their counts per digit the
    manifest's; orphaned images; foreign objects under datasets/ingested/."""
    problems, versions = [], []
    for o in objects:
        if not (keys.data_version_of(o.key) or keys.is_data_images(o.key)):
            problems.append(f"{o.key}: a foreign object (not a dataset version's manifest or images)")
    manifests = [o.key for o in objects if keys.data_version_of(o.key)]
    for key in manifests:
        try:
            manifest = parse_version(key, store.get(key))
            records = load(store, manifest)
        except PipelineError as exc:
            problems.append(str(exc))
            continue
        versions.append(manifest)
        if counts_of(records) != manifest.counts:
            problems.append(f"{manifest.images.key}: its counts per digit are not those {key} records")
    problems += [f"{o.key}: images no dataset version names (an ingest that died); `mnist-pipeline gc` deletes them"
                 for o in orphans(objects, versions)]
    return versions, problems, len(manifests)
