"""Keras models: the native .keras format, always loaded in safe mode, and how they predict."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mnist_pipeline.errors import UnsafeModel
from mnist_pipeline.tensors import as_tensor


def model_to_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def model_from_bytes(data: bytes, what: str = "model"):
    """Load with safe_mode=True: a model carrying code (a Lambda layer) is refused, not run."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            return keras.saving.load_model(path, safe_mode=True, compile=False)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "Lambda" in str(exc):
                raise UnsafeModel(f"{what} contains arbitrary code (e.g. a Lambda layer) and was "
                                  "refused by Keras safe mode") from None
            raise UnsafeModel(f"{what} does not load as a Keras model: {exc}") from None
        except Exception as exc:  # corrupt zip, missing weights, ...
            raise UnsafeModel(f"{what} does not load as a Keras model: {type(exc).__name__}: {exc}") from None


def predict_probabilities(model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Forward passes in large batches, eagerly: `model.predict` would first trace a predict
    function (about 95 MB of this process's peak memory here) to run ten batches."""
    return np.concatenate([np.asarray(model(as_tensor(images[i:i + batch_size]), training=False))
                           for i in range(0, len(images), batch_size)])


def measured_accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy as the flow's evaluate stage measures it (same batches, same rounding)."""
    predicted = predict_probabilities(model, images).argmax(axis=1)
    return round(float(np.mean(predicted == labels)), 6)
