"""train: the README MLP (default) or the cnn (mnist_pipeline/model.py), seeded, validated on the
validation split only, stored once with its SHA-256."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from mnist_pipeline import keys
from mnist_pipeline.model import build_model, fit, model_from_bytes, model_to_bytes, use_threads_for
from mnist_pipeline.params import TrainParams
from mnist_pipeline.store import ArtifactStore, file_record
from tasks.normalize import Splits
from tasks.stage import stage


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    train_seconds: float
    model_key: str
    model_file: dict  # sha256/md5/bytes of what was stored: promotion and every later use check it
    weights: str  # which weights the model holds, for the report and the manifest
    reused: bool = False


def earlier_attempt(store: ArtifactStore, run_id: str) -> TrainResult | None:
    """The model a failed attempt of this run stored, if its bytes are still the ones recorded
    (writes are atomic, so a stored model is whole): a retried run reuses it instead of training."""
    model_key, history_key = keys.model(run_id), keys.training_history(run_id)
    if not (store.exists(model_key) and store.exists(history_key)):
        return None
    saved = json.loads(store.get(history_key))
    data = store.get(model_key)
    if file_record(data) != saved.get("model_file"):
        return None
    return TrainResult(model_from_bytes(data, model_key), saved["history"], saved["train_seconds"],
                       model_key, saved["model_file"], saved["weights"], reused=True)


def train_model(data: Splits, params: TrainParams, store: ArtifactStore, run_id: str, on_epoch=None,
                hyperparameters: dict | None = None) -> TrainResult:
    """`hyperparameters`: a point of the search space, for a tuned candidate; None for the
    model's own recipe. Stored now, once, with its SHA-256: every later use of these bytes
    (promotion, rollback, predict) checks it. A retried run reuses what an earlier attempt stored."""
    reused = earlier_attempt(store, run_id)
    if reused:
        return reused
    import keras

    use_threads_for(params.model)
    keras.utils.set_random_seed(params.seed)
    steps = params.epochs * math.ceil(len(data.x_train) / params.batch_size)
    model = build_model(params.model, steps, {"learning_rate": params.learning_rate, **(hyperparameters or {})})
    fitted = fit(model, data.x_train, data.y_train, epochs=params.epochs, batch_size=params.batch_size,
                 validation=(data.x_val, data.y_val), on_epoch=on_epoch)
    model_bytes = model_to_bytes(fitted.model)
    record = file_record(model_bytes)
    store.put(keys.model(run_id), model_bytes, "application/zip")
    store.put(keys.training_history(run_id), json.dumps(
        {"history": fitted.history, "train_seconds": fitted.seconds, "weights": fitted.weights,
         "model_file": record}).encode(), "application/json")
    return TrainResult(fitted.model, fitted.history, fitted.seconds, keys.model(run_id), record, fitted.weights)


@stage("train")
def train_task(data: Splits, params: TrainParams, store: ArtifactStore, run_id: str,
               hyperparameters: dict | None = None) -> TrainResult:
    log = get_run_logger()

    progress = ProgressArtifact(log, params)

    def on_epoch(epoch: int, logs: dict) -> None:
        log.info("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  (%.1f s)",
                 epoch, params.epochs, logs.get("loss", np.nan), logs.get("accuracy", np.nan),
                 logs.get("val_loss", np.nan), logs.get("val_accuracy", np.nan), logs["seconds"])
        progress.update(100.0 * epoch / params.epochs)

    result = train_model(data, params, store, run_id, on_epoch, hyperparameters)
    if result.reused:
        log.info("reusing the model stored by an earlier attempt of this run: %s", result.model_key)
        progress.update(100.0)
    return result


class ProgressArtifact:
    """The UI's progress bar of the training. Only a view: an API call that fails (after
    Prefect's own retries) is a warning, once, and the bar stops; the training goes on."""

    def __init__(self, log, params: TrainParams):
        self.log, self.broken = log, False
        self.id = self._call(create_progress_artifact, progress=0.0, key="mnist-training-progress",
                             description=f"training {params.model}, {params.epochs} epochs")

    def update(self, percent: float) -> None:
        if not self.broken:
            self._call(update_progress_artifact, self.id, progress=percent)

    def _call(self, api, *args, **kwargs):
        try:
            return api(*args, **kwargs)
        except Exception as exc:
            self.broken = True
            self.log.warning("the training's progress bar is not updated any more: %s: %s; the training goes on",
                             type(exc).__name__, exc)
