"""The ingested dataset versions in a run (mnist_pipeline/data_versions.py): chosen first, before
any work, so that a run whose inputs are production's run's can end there (`skip_unchanged`);
their training parts join MNIST's training set before the validation split, which so draws from
both (tasks/normalize.py); their holdout images, never trained on, are evaluated for this run and
for production's model: the new-data accuracy (metrics.json "new_data")."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger

from mnist_pipeline import data_versions, registry, run_inputs
from mnist_pipeline.data_versions import Holdout, VersionManifest
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.params import TrainParams
from mnist_pipeline.store import ArtifactStore
from tasks.normalize import to_unit_float32
from tasks.stage import stage
from tasks.validate import MnistArrays


def run_inputs_record(params: TrainParams, versions: list[VersionManifest], origin: dict) -> dict:
    """This run's inputs as its manifest records them (run_inputs.differences compares them)."""
    return {"data_versions": [v.reference() for v in versions], "parameters": params.model_dump(),
            **{k: origin.get(k) for k in ("git_commit", "source_sha256", "versions")}}


def changes_since(store: ArtifactStore, production: registry.Production | None, run: dict) -> list[str]:
    """What differs from production's run (its manifest), one phrase each."""
    if production is None:
        return run_inputs.differences(run, None)
    try:
        manifest, _ = registry.read_manifest(store, production.run_id)
    except PipelineError as exc:  # preflight checked its model; a manifest that does not read differs
        return [f"production's run manifest does not read ({exc})"]
    return run_inputs.differences(run, manifest)


@stage("data-versions")
def select_versions_task(store: ArtifactStore, data_version: int | None) -> list[VersionManifest]:
    versions = data_versions.select(store, data_version)
    get_run_logger().info("ingested data: %s", ", ".join(
        f"version {v.version} ({v.train_images:,} training, {v.holdout_images:,} holdout images)" for v in versions)
        or "none (MNIST alone)")
    return versions


@stage("inputs")
def inputs_task(store: ArtifactStore, production: registry.Production | None, params: TrainParams,
                versions: list[VersionManifest], origin: dict) -> dict:
    """The run's data versions and what changed since production's run, for its manifest."""
    record = run_inputs_record(params, versions, origin)
    changes = changes_since(store, production, record)
    get_run_logger().info("since production's run: %s", "; ".join(changes) or "nothing changed")
    return {"data_versions": record["data_versions"], "changes_since_production": changes}


def with_ingested(store: ArtifactStore, versions: list[VersionManifest], arrays: MnistArrays,
                  profile: dict) -> tuple[MnistArrays, dict, Holdout | None]:
    """MNIST's training set with the versions' training parts appended, the data profile of it,
    and the versions' holdouts (None without versions)."""
    if not versions:
        return arrays, profile, None
    rows = [(v, data_versions.load(store, v)) for v in versions]
    train = np.concatenate([r[~r["holdout"]] for _, r in rows])
    holdout = data_versions.holdout_of(rows)
    x_train = np.concatenate([arrays.x_train, train["image"]])
    y_train = np.concatenate([arrays.y_train, train["label"]])
    mnist = profile["train_samples"]
    added_mean = float(train["image"].mean(dtype=np.float64)) / 255
    mean = (profile["train_pixel_mean"] * mnist + added_mean * len(train)) / len(x_train)
    profile = dict(profile, train_samples=len(x_train), train_class_counts=np.bincount(y_train, minlength=10).tolist(),
                   train_pixel_mean=round(mean, 5), mnist_train_samples=mnist, holdout_samples=len(holdout.labels),
                   ingested=[{**v.reference(), "note": v.note, "created_at": v.created_at} for v in versions])
    return MnistArrays(x_train, y_train, arrays.x_test, arrays.y_test), profile, holdout


@stage("ingested")
def ingested_task(store: ArtifactStore, versions: list[VersionManifest], arrays: MnistArrays,
                  profile: dict) -> tuple[MnistArrays, dict, Holdout | None]:
    return with_ingested(store, versions, arrays, profile)


def accuracy_on(model, holdout: Holdout) -> tuple[float, np.ndarray]:
    from mnist_pipeline.model import predict_probabilities

    right = predict_probabilities(model, to_unit_float32(holdout.images)).argmax(axis=1) == holdout.labels
    return round(float(right.mean()), 6), right


def new_data_metrics(model, holdout: Holdout, production_model=None, production_run_id: str | None = None) -> dict:
    """metrics.json's "new_data": this model's accuracy on the holdout images (and per version),
    and production's model's on the same images."""
    accuracy, right = accuracy_on(model, holdout)
    per_version = {str(n): {"accuracy": round(float(right[holdout.versions == n].mean()), 6),
                            "images": int((holdout.versions == n).sum())} for n in np.unique(holdout.versions)}
    before = None
    if production_model is not None:
        before = {"run_id": production_run_id, "accuracy": accuracy_on(production_model, holdout)[0]}
    return {"accuracy": accuracy, "images": len(holdout.labels), "versions": sorted(int(n) for n in per_version),
            "per_version": per_version, "production_before": before}


@stage("new-data")
def new_data_task(store: ArtifactStore, model, holdout: Holdout | None,
                  production: registry.Production | None) -> dict:
    """{"new_data": ...} to add to the metrics, or {} when no version has holdout images."""
    if holdout is None or not len(holdout.labels):
        return {}
    production_model = None
    if production is not None:
        from mnist_pipeline.model import model_from_bytes

        data = registry.verified_bytes(store, production.model_key, production.model_sha256, "production model")
        production_model = model_from_bytes(data, production.model_key)
    metrics = new_data_metrics(model, holdout, production_model, production and production.run_id)
    before = metrics["production_before"]
    get_run_logger().info("new-data accuracy %.4f on %d holdout images of %s%s", metrics["accuracy"], metrics["images"],
                          run_inputs.ranges(metrics["versions"]),
                          f"; production's model {before['accuracy']:.4f}" if before else "")
    return {"new_data": metrics}


def new_data_accuracy(metrics: dict) -> float | None:
    return (metrics.get("new_data") or {}).get("accuracy")
