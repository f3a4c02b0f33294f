"""Keras model (de)serialisation: always the native .keras format, always loaded in safe mode."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mnist_pipeline.errors import UnsafeModel


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
