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


# Share of the training steps over which the cnn's learning rate climbs from a tenth of its peak to
# the peak; a cosine takes it back to zero over the rest.
CNN_WARMUP_FRACTION = 0.2


def one_cycle(peak: float, total_steps: int):
    """Linear warm-up to `peak`, then cosine decay to zero: Keras's own CosineDecay, so it is saved
    with the model and needs no custom object to load. It reads the optimizer's step counter inside
    the graph, so it moves every step even with steps_per_execution=1024."""
    import keras

    warmup = int(CNN_WARMUP_FRACTION * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup else peak, decay_steps=max(1, total_steps - warmup), alpha=0.0,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def mlp_layers(units: int = 128, dropout: float = 0.0) -> list:
    """The README model's hidden layers (Dense 128 relu, Dense 64 relu); the tuner varies them."""
    from keras import layers

    drop = [layers.Dropout(dropout)] if dropout > 0 else []
    return [layers.Flatten(), layers.Dense(units, activation="relu"), *drop,
            layers.Dense(units // 2, activation="relu"), *drop]


def cnn_layers(filters: int = 16, units: int = 128, dropout: float = 0.0, shift_px: int = 2) -> list:
    """The cnn's body, as measured in docs/cnn.md (55,000 training images, seed 42 unless said).
    The arguments are what the tuner varies (mnist_pipeline/search_space.py); their defaults are
    the recipe."""
    from keras import layers

    # bfloat16 maths in the convolutions and the dense layer, float32 variables: this CPU has
    # AVX512-BF16, and oneDNN's bf16 kernels took 6 epochs from 40 s to 30 s at the same accuracy
    # (0.9930 against 0.9927). Batch norm computes in float32 itself; the softmax stays float32.
    # (A CPU without AVX512-BF16 still runs it, emulated and slower.)
    bf16 = "mixed_bfloat16"
    # +-2 px shifts while training (Keras applies them only when training=True): 0.9950 against
    # 0.9930 without. 3 px shifts (0.9942), rotations even of 5 degrees (0.9936) and rotations
    # with zooms (0.9929) cost accuracy in a training this short.
    body = [layers.Reshape((28, 28, 1))]
    if shift_px:
        body.append(layers.RandomTranslation(shift_px / 28, shift_px / 28, fill_mode="constant"))
    # Two 5x5 conv blocks of 16 and 32 filters: wider (24/48: 0.9955 in 47 s; 32/64: 0.9947 in 45 s
    # for the 5 epochs that fit) or deeper (a third conv: 0.9951 in 46 s) paid nothing here.
    for width in (filters, 2 * filters):
        # Pool before batch norm and ReLU: nearly the same model (a max commutes with ReLU and
        # with a per-channel affine map of positive scale; batch statistics are then taken over
        # the pooled values), but Keras's unfused batch norm then runs on a quarter of the
        # values: ~6.6 s of CPU per epoch against ~9.7 s (float32); 7 epochs in 34.7 s against
        # 43.5 s, 0.9951 against 0.9947. Momentum 0.9: the weights move fast in ~1,500 steps,
        # and the default 0.99's moving statistics lagged so far behind after one epoch that the
        # test accuracy was 0.14 (0.97 on validation images with the batch's own statistics).
        # 0.99 over a whole run was not measured.
        body += [layers.Conv2D(width, 5, use_bias=False, dtype=bf16), layers.MaxPooling2D(dtype=bf16),
                 layers.BatchNormalization(momentum=0.9, dtype=bf16), layers.Activation("relu", dtype=bf16)]
    # No dropout: 0.9945 with 0.3 after the dense layer against 0.9950 without, in 6 epochs.
    body += [layers.Flatten(dtype=bf16), layers.Dense(units, use_bias=False, dtype=bf16),
             layers.BatchNormalization(momentum=0.9, dtype=bf16), layers.Activation("relu", dtype=bf16)]
    return body + ([layers.Dropout(dropout)] if dropout > 0 else [])


def build_model(kind: str, learning_rate: float, total_steps: int = 1, hyperparameters: dict | None = None):
    """The model of `kind`; `hyperparameters` (units, dropout; for the cnn filters and
    augment_shift_px) vary its shape for the tuner, and default to the recipe."""
    import keras
    from keras import layers

    hp = hyperparameters or {}
    shape = {k: hp[k] for k in ("units", "dropout") if k in hp}
    if kind == "mlp":  # the README model: its layers, Adam at a fixed learning rate, 10 epochs
        body = mlp_layers(**shape)
        # Keep an exponential moving average of the weights (Polyak averaging, Adam's own option)
        # and ship that: the last epoch's raw weights are a noisy draw. On the 55,000 images left
        # after the validation split: 0.9793 mean test accuracy over seeds 42-51 against 0.9760
        # without (measured); ~2 s more training.
        optimizer = keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=0.99)
    else:
        body = cnn_layers(**shape, **({"filters": hp["filters"]} if "filters" in hp else {}),
                          **({"shift_px": hp["augment_shift_px"]} if "augment_shift_px" in hp else {}))
        # No weight averaging and no label smoothing: the learning rate decays to zero, so the
        # last weights are already settled. Adam's use_ema with label smoothing 0.1 gave 0.9951
        # mean over seeds 42-44 against 0.9951 without.
        optimizer = keras.optimizers.Adam(one_cycle(learning_rate, max(1, total_steps)))
    model = keras.Sequential([keras.Input((28, 28)), *body,
                              layers.Dense(10, activation="softmax", dtype="float32")], name=f"mnist_{kind}")
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
