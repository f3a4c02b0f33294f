"""Reading what the registry trusts, and checking it: production.json, a finished run's
manifest, a model's bytes against the SHA-256 recorded when they were stored, and a candidate's
accuracy measured on those bytes (no file's word is taken for it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mnist_pipeline import keys
from mnist_pipeline.errors import DamagedRegistry, NotFoundInStore, RegistryError
from mnist_pipeline.registry.schema import VERIFY_HINT, Production, parse_production
from mnist_pipeline.store import ArtifactStore

# Two test images: the float round-off of a tie between two classes, at most.
ACCURACY_TOLERANCE = 2e-4


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_production_raw(store: ArtifactStore) -> tuple[bytes | None, str | None]:
    try:
        return store.get_with_etag(keys.PRODUCTION)
    except NotFoundInStore:
        return None, None


def read_production(store: ArtifactStore) -> tuple[Production | None, str | None]:
    """production.json and its ETag; (None, None) when nothing is in production; DamagedRegistry
    (one line naming the object) when it is not what it should be."""
    data, etag = read_production_raw(store)
    return (parse_production(data) if data is not None else None), etag


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
    key, model = keys.manifest(run_id), keys.model(run_id)
    try:
        data = store.get(key)
    except NotFoundInStore:
        raise RegistryError(f"run {run_id} is incomplete: it has no manifest (the run did not finish); "
                            "only finished runs can be promoted") from None
    try:
        manifest = json.loads(data)
        recorded = manifest["files"][model]["sha256"]
        if not isinstance(recorded, str) or not isinstance(manifest["test_accuracy"], (int, float)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise DamagedRegistry(f"{key} is damaged or predates model hashes (no files.{model}.sha256 or "
                              f"test_accuracy); {VERIFY_HINT}") from None
    return manifest, sha256(data)


def collected_files(store: ArtifactStore, run_id: str) -> dict[str, int]:
    """Files `mnist-pipeline gc` deleted from this run (key -> bytes), from its mark."""
    key = keys.collected(run_id)
    try:
        mark = json.loads(store.get(key))
        return dict(mark["files"])
    except NotFoundInStore:
        return {}
    except (ValueError, KeyError, TypeError):
        raise DamagedRegistry(f"{key} is damaged; {VERIFY_HINT}") from None


def collected(store: ArtifactStore, run_id: str) -> bool:
    return keys.model(run_id) in collected_files(store, run_id)


@dataclass(frozen=True)
class Candidate:
    """A stored model and the accuracy promotion may trust for it."""

    run_id: str
    model_sha256: str
    test_accuracy: float  # measured on these bytes, never read from a file
    new_data_accuracy: float | None = None  # on the ingested holdout images its run was judged on
    class_recall: dict[str, float] | None = None  # digit -> recall, measured with the accuracy

    @property
    def model_key(self) -> str:
        return keys.model(self.run_id)


def measure_on_test_set(store: ArtifactStore, data: bytes, key: str) -> float:
    """Load in safe mode and score on the 10,000 verified test images from the store's cache."""
    from mnist_pipeline.model import model_from_bytes

    return model_scores_on_test_set(store, model_from_bytes(data, key))[0]


def model_scores_on_test_set(store: ArtifactStore, model) -> tuple[float, dict[str, float]]:
    """A loaded model's test accuracy, and each digit's recall from the same predictions."""
    from mnist_pipeline.dataset import load_test_images, load_test_labels
    from mnist_pipeline.model import measured_scores

    return measured_scores(model, load_test_images(store), load_test_labels(store))


def new_data_accuracy_of(store: ArtifactStore, run_id: str, manifest: dict, model) -> float | None:
    """The model's accuracy on the holdout images of the data versions its run learned from (its
    manifest), measured now as the flow measures it; None when they hold none."""
    from mnist_pipeline import data_versions
    from mnist_pipeline.dataset import unit_float32
    from mnist_pipeline.model import measured_accuracy

    try:
        held = [ref for ref in manifest.get("data_versions") or [] if int(ref["holdout"])]
    except (KeyError, TypeError, ValueError):
        raise DamagedRegistry(f"{keys.manifest(run_id)} is damaged: a data_versions entry without its version, "
                              f"sha256 and holdout count; {VERIFY_HINT}") from None
    versions = [data_versions.read_version(store, ref) for ref in held]
    if not versions:
        return None
    holdout = data_versions.holdout_of([(v, data_versions.load(store, v)) for v in versions])
    return measured_accuracy(model, unit_float32(holdout.images), holdout.labels)


def stored_candidate(store: ArtifactStore, run_id: str, *, new_data: bool = False) -> Candidate:
    """A finished run's model, hash-checked against its manifest and measured on the test set
    (and, with `new_data`, on its run's ingested holdout images). A manifest whose accuracy
    disagrees with what its model scores is refused as tampered."""
    manifest, _ = read_manifest(store, run_id)
    gone = collected_files(store, run_id)
    model = keys.model(run_id)
    if model in gone:
        raise RegistryError(f"run {run_id}'s model was deleted by `mnist-pipeline gc`; it cannot be promoted")
    missing = sorted(k for k in set(manifest["files"]) - set(gone) if not store.exists(k))
    if missing:
        raise RegistryError(f"run {run_id} is incomplete: {missing[0]} is missing"
                            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {VERIFY_HINT}")
    from mnist_pipeline.model import model_from_bytes

    data = verified_bytes(store, model, manifest["files"][model]["sha256"], f"model of run {run_id}")
    loaded = model_from_bytes(data, model)  # loaded once, for the test set and the new data
    measured, class_recall = model_scores_on_test_set(store, loaded)
    recorded = float(manifest["test_accuracy"])
    if abs(measured - recorded) > ACCURACY_TOLERANCE:
        raise DamagedRegistry(
            f"{keys.manifest(run_id)} records test accuracy {recorded:.4f}, but its model scores "
            f"{measured:.4f} on the 10,000 test images: the manifest was edited; {VERIFY_HINT}")
    new_data_accuracy = new_data_accuracy_of(store, run_id, manifest, loaded) if new_data else None
    return Candidate(run_id, sha256(data), measured, new_data_accuracy=new_data_accuracy, class_recall=class_recall)
