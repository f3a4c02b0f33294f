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


# The shipped cnn averages CNN_MEMBERS networks that share their first conv block, each trained on
# its own loss with label smoothing (docs/cnn.md). Two members: 0.9962-0.9964 test accuracy where
# one network of the same recipe gave 0.9953-0.9959 (seeds 42-44, 10 epochs).
CNN_MEMBERS = 2
CNN_LABEL_SMOOTHING = 0.1
# Float32 throughout. bfloat16 layers trained 25% faster on a CPU with AVX512-BF16, but 8x slower
# on one without it (this project's AVX2 machine: 7 epochs in 544 s against 69 s), and a model
# saved in bfloat16 computes in bfloat16 wherever it is loaded.


def cnn_stem(x, filters: int, shift_px: int):
    """What the members share: random shifts while training (Keras applies them only when
    training=True; +-2 px: 0.9950 against 0.9930 without) and the first conv block."""
    from keras import layers

    x = layers.Reshape((28, 28, 1))(x)
    if shift_px:
        x = layers.RandomTranslation(shift_px / 28, shift_px / 28, fill_mode="constant")(x)
    return _conv_block(x, filters)


def _conv_block(x, width: int):
    """Conv 5x5 -> max pool -> batch norm -> ReLU. Pooling before batch norm is nearly the same model
    (a max commutes with ReLU and with a per-channel affine map of positive scale) at a quarter of
    the batch norm's cost, which Keras does not fuse. Momentum 0.9: with the default 0.99 the moving
    statistics still lagged so far behind after one epoch that test accuracy was 0.14."""
    from keras import layers

    x = layers.Conv2D(width, 5, use_bias=False)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.Activation("relu")(x)


def cnn_member(x, filters: int, units: int, dropout: float, name: str):
    """One member on top of the stem: a second conv block of twice the filters, a dense layer with
    batch norm, its own softmax. Wider (24/48 filters), deeper (a third conv) and dropout after the
    dense layer paid nothing in docs/cnn.md's measurements."""
    from keras import layers

    x = layers.Flatten()(_conv_block(x, 2 * filters))
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.Activation("relu")(layers.BatchNormalization(momentum=0.9)(x))
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(10, activation="softmax", name=name)(x)


def build_cnn(learning_rate: float, total_steps: int, filters: int = 16, units: int = 128,
              dropout: float = 0.0, shift_px: int = 2, members: int = CNN_MEMBERS):
    """The cnn as it trains: an output per member and their average, "ensemble" (for one member,
    that member). Each member learns from its own loss, so that they differ; the average's loss
    weighs nothing and is only watched. `shipped_model` is what gets stored."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28))
    stem = cnn_stem(inputs, filters, shift_px)
    if members == 1:
        outputs = {"ensemble": cnn_member(stem, filters, units, dropout, "ensemble")}
    else:
        heads = {f"member_{i}": cnn_member(stem, filters, units, dropout, f"member_{i}") for i in range(members)}
        outputs = {**heads, "ensemble": layers.Average(name="ensemble")(list(heads.values()))}
    model = keras.Model(inputs, outputs, name="mnist_cnn")
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=CNN_LABEL_SMOOTHING)
    model.compile(optimizer=keras.optimizers.Adam(one_cycle(learning_rate, max(1, total_steps))),
                  loss={name: smoothed for name in outputs},
                  loss_weights={name: 0.0 if name == "ensemble" and members > 1 else 1.0 for name in outputs},
                  # what the shipped model scores: accuracy and plain cross-entropy (the test loss's
                  # measure; the smoothed loss never goes below ~0.5)
                  metrics={"ensemble": ["accuracy", keras.metrics.CategoricalCrossentropy(name="cross_entropy")]},
                  steps_per_execution=1024, jit_compile=False)
    return model


def shipped_model(model):
    """The model to store, evaluate and serve: one input, the averaged probabilities out."""
    import keras

    if not _output_names(model):
        return model
    return keras.Model(model.input, model.get_layer("ensemble").output, name=model.name)


def _output_names(model) -> list[str]:
    """The cnn's named outputs (members first, "ensemble" last); [] for a single-output model."""
    import keras

    if isinstance(model, keras.Sequential) or not isinstance(model.output, dict):
        return []
    return list(model.output)


def training_targets(model, labels: np.ndarray):
    """Labels as fit wants them for `model`: the cnn's smoothed losses take one-hot rows, one per output."""
    names = _output_names(model)
    if not names:
        return labels
    one_hot = np.eye(10, dtype=np.float32)[labels]
    return {name: one_hot for name in names}


def plain_logs(logs: dict) -> dict:
    """Keras's per-epoch figures under the pipeline's names (loss, accuracy, val_loss,
    val_accuracy), for the shipped model: the cnn's come from its "ensemble" output, its loss being
    the plain cross-entropy. The cnn's training objective stays, as "objective". (With one
    member, its only output, Keras leaves the output's name out of the metric names.)"""
    output = "ensemble_" if "ensemble_accuracy" in logs else ""
    if f"{output}cross_entropy" not in logs:
        return dict(logs)  # the MLP: its figures are already these
    out = {}
    for prefix in ("", "val_"):
        if f"{prefix}{output}accuracy" in logs:
            out[f"{prefix}objective"] = logs.get(f"{prefix}loss")
            out[f"{prefix}loss"] = logs[f"{prefix}{output}cross_entropy"]
            out[f"{prefix}accuracy"] = logs[f"{prefix}{output}accuracy"]
    return out


def build_model(kind: str, learning_rate: float, total_steps: int = 1, hyperparameters: dict | None = None):
    """The model of `kind`, compiled for training; `hyperparameters` (units, dropout; for the cnn
    filters, augment_shift_px and members) vary its shape for the tuner, and default to the recipe."""
    import keras
    from keras import layers

    hp = hyperparameters or {}
    shape = {k: hp[k] for k in ("units", "dropout") if k in hp}
    if kind == "cnn":
        return build_cnn(learning_rate, total_steps, **shape,
                         **{arg: int(hp[key]) for key, arg in (("filters", "filters"), ("augment_shift_px", "shift_px"),
                                                               ("members", "members")) if key in hp})
    # The README model: its layers, Adam at a fixed learning rate, 10 epochs. Keep an exponential
    # moving average of the weights (Polyak averaging, Adam's own option) and ship that: the last
    # epoch's raw weights are a noisy draw. On the 55,000 images left after the validation split:
    # 0.9793 mean test accuracy over seeds 42-51 against 0.9760 without (measured); ~2 s more training.
    optimizer = keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=0.99)
    model = keras.Sequential([keras.Input((28, 28)), *mlp_layers(**shape),
                              layers.Dense(10, activation="softmax")], name="mnist_mlp")
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
            logs = dict(plain_logs(logs or {}), seconds=time.perf_counter() - self._t0)
            if on_epoch:
                on_epoch(epoch + 1, logs)

    return EpochReport()


def _callbacks(model, on_epoch) -> tuple[list, str]:
    """Keras callbacks for fit, and which weights the model will hold once fit returns."""
    import keras

    callbacks = [keras.callbacks.TerminateOnNaN(), _epoch_callback(on_epoch)]
    if not model.optimizer.use_ema:
        members = _output_names(model)[:-1]
        return callbacks, "those after the last epoch" + (
            f"; the output is the average of {len(members)} networks'" if members else "")
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
    fit = model.fit(as_tensor(data.x_train), training_targets(model, data.y_train), epochs=params.epochs,
                    batch_size=params.batch_size, shuffle=True, verbose=0,
                    validation_data=(as_tensor(data.x_val), training_targets(model, data.y_val)),
                    callbacks=callbacks)
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in plain_logs(fit.history).items()}
    model = shipped_model(model)
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
