"""Runs stored the way the flow stores them, in a second instead of a training: small real Keras
models (linear classifiers fitted in closed form on real MNIST images) whose accuracy is really
measured, written with the pipeline's own storage functions, manifest and history record."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from mnist_pipeline import keys, registry
from mnist_pipeline.model import model_to_bytes
from mnist_pipeline.store import ArtifactStore, file_record


def read_idx(mirror: Path, name: str, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.decompress((mirror / f"{name}.gz").read_bytes()), np.uint8, offset=offset)


def linear_model(weights: np.ndarray, bias: np.ndarray):
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.layers[-1].set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


@dataclass(frozen=True)
class ZooModel:
    data: bytes
    accuracy: float  # measured on the 10,000 test images
    predictions: np.ndarray


def model_zoo(mirror: Path, noise_levels=(0.0, 0.6, 1.5, 40.0)) -> list[ZooModel]:
    """Nearest-class-mean classifiers (about 82% accurate), then the same with more and more
    noise in the weights: a range of accuracies, deterministic, no training."""
    from mnist_pipeline.model import predict_probabilities

    x = read_idx(mirror, "train-images-idx3-ubyte", 16).reshape(-1, 784)[:20000] / 255.0
    y = read_idx(mirror, "train-labels-idx1-ubyte", 8)[:20000]
    x_test = (read_idx(mirror, "t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28) / np.float32(255)).astype(np.float32)
    y_test = read_idx(mirror, "t10k-labels-idx1-ubyte", 8)
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    weights, bias = means.T * 20, -10 * (means ** 2).sum(axis=1)
    rng = np.random.default_rng(0)
    zoo = []
    for noise in noise_levels:
        model = linear_model(weights + rng.normal(0, noise, weights.shape), bias)
        predictions = predict_probabilities(model, x_test).argmax(axis=1).astype(np.uint8)
        zoo.append(ZooModel(model_to_bytes(model), round(float(np.mean(predictions == y_test)), 6), predictions))
    return zoo


def cache_test_set(store: ArtifactStore, mirror: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if not store.exists(keys.mnist_file(name)):
            store.put(keys.mnist_file(name), (mirror / f"{name}.gz").read_bytes())


def store_run(store: ArtifactStore, run_id: str, zoo_model: ZooModel, *, minutes_ago: float = 0,
              model: str = "mlp", epochs: int = 10, decide: str | None = "blocked",
              parameters: dict | None = None, data_versions: list[dict] | None = None) -> dict:
    """A finished run as the flow leaves it (files, manifest with hashes) and, unless decide is
    None, its flow's history record (what indexes it). Returns the manifest."""
    import io

    started = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    prefix = f"runs/{run_id}/"
    buf = io.BytesIO()
    np.save(buf, zoo_model.predictions, allow_pickle=False)
    files = {
        prefix + "model.keras": zoo_model.data,
        prefix + "metrics.json": json.dumps({"test_accuracy": zoo_model.accuracy, "test_loss": 0.5,
                                             "test_errors": round((1 - zoo_model.accuracy) * 10000)}).encode(),
        prefix + "predictions.npy": buf.getvalue(),
        prefix + "plots/confusion_matrix.png": b"\x89PNG fake",
        prefix + "report.html": f"<html>report of {run_id}</html>".encode(),
    }
    for key, data in files.items():  # with the content types the flow gives them: a browser opens the report
        store.put(key, data, "text/html; charset=utf-8" if key.endswith(".html") else "application/octet-stream")
    manifest = {"run_id": run_id, "started_at": started.isoformat(),
                "finished_at": (started + timedelta(seconds=30)).isoformat(),
                "parameters": parameters or {"model": model, "epochs": epochs, "batch_size": 32, "min_accuracy": None},
                "min_accuracy": 0.97, "test_accuracy": zoo_model.accuracy,
                "files": {k: file_record(v) for k, v in files.items()},
                "gate": {"promoted": decide == "promoted", "reason": "stored by the test"},
                **({"data_versions": data_versions} if data_versions else {})}
    store.put(prefix + "manifest.json", json.dumps(manifest).encode())
    if decide:
        key = f"{keys.HISTORY}{started.strftime('%Y%m%dT%H%M%S.%fZ')}-{run_id}.json"
        registry.write_history(store, {"run_id": run_id, "decision": decide, "test_accuracy": zoo_model.accuracy,
                                       "reason": "stored by the test", "source": "flow",
                                       "run": {"started_at": started.isoformat(), "model": model, "epochs": epochs}},
                               key)
    return manifest
