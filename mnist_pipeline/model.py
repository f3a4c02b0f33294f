"""The model, in one place: the architectures (the README MLP and the cnn), how they are fitted
and checked, how many threads they use, how they predict, and how they are saved and loaded (the
native .keras format, always loaded in safe mode). The train stage and the tuner's trials both
build and fit through here; this module imports neither.

Keras and TensorFlow are imported inside the functions: importing this module loads neither.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mnist_pipeline.errors import TrainingDiverged, UnsafeModel
from mnist_pipeline.search_space import default_values
from mnist_pipeline.tensors import as_tensor

# -- the architectures -----------------------------------------------------------------------------

# Share of the training steps over which the cnn's learning rate climbs from a tenth of its peak to
# the peak; a cosine takes it back to zero over the rest.
CNN_WARMUP_FRACTION = 0.2
CNN_LABEL_SMOOTHING = 0.1
CNN_KERNEL = 5  # every conv's kernel size in the recipe (experiments may vary the members')
# Adam's moving average of the MLP's weights (Polyak averaging): the last epoch's raw weights are a
# noisy draw, the average is what gets validated, stored and served (docs/performance.md).
MLP_EMA_MOMENTUM = 0.99
# Many steps per call into the graph: per-batch Python overhead dominates models this small on a
# CPU; the maths is unchanged. No XLA: slower than oneDNN for the convolutions (docs/cnn.md).
STEPS_PER_EXECUTION = 1024


def one_cycle(peak: float, total_steps: int):
    """Linear warm-up to `peak`, then cosine decay to zero: Keras's own CosineDecay, so it is saved
    with the model and needs no custom object to load. It reads the optimizer's step counter inside
    the graph, so it moves every step even with many steps per execution."""
    import keras

    warmup = int(CNN_WARMUP_FRACTION * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        peak / 10 if warmup else peak, decay_steps=max(1, total_steps - warmup), alpha=0.0,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def mlp_layers(units: int, dropout: float) -> list:
    """The README model's hidden layers (Dense 128 relu, Dense 64 relu); the tuner varies them."""
    from keras import layers

    drop = [layers.Dropout(dropout)] if dropout > 0 else []
    return [layers.Flatten(), layers.Dense(units, activation="relu"), *drop,
            layers.Dense(units // 2, activation="relu"), *drop]


def build_mlp(learning_rate: float, units: int, dropout: float):
    import keras
    from keras import layers

    optimizer = keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=MLP_EMA_MOMENTUM)
    model = keras.Sequential([keras.Input((28, 28)), *mlp_layers(units, dropout),
                              layers.Dense(10, activation="softmax")], name="mnist_mlp")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION, jit_compile=False)
    return model


def _conv_block(x, width: int, kernel: int = CNN_KERNEL):
    """Conv -> max pool -> batch norm -> ReLU. Pooling before batch norm is nearly the same model
    (a max commutes with ReLU and with a per-channel affine map of positive scale) at a quarter of
    the batch norm's cost. Momentum 0.9: with the default 0.99 the moving statistics lag so far
    behind after one epoch that the model is useless on test images."""
    from keras import layers

    x = layers.Conv2D(width, kernel, use_bias=False)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.Activation("relu")(x)


def cnn_stem(x, filters: int, shift_px: int):
    """What the members share: random shifts while training (Keras applies them only when
    training=True) and the first conv block."""
    from keras import layers

    x = layers.Reshape((28, 28, 1))(x)
    if shift_px:
        x = layers.RandomTranslation(shift_px / 28, shift_px / 28, fill_mode="constant")(x)
    return _conv_block(x, filters)


def cnn_member(x, filters: int, units: int, dropout: float, name: str, kernel: int = CNN_KERNEL):
    """One member on top of the stem: a second conv block of twice the filters, a dense layer with
    batch norm, its own softmax."""
    from keras import layers

    x = layers.Flatten()(_conv_block(x, 2 * filters, kernel))
    x = layers.Dense(units, use_bias=False)(x)
    x = layers.Activation("relu")(layers.BatchNormalization(momentum=0.9)(x))
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(10, activation="softmax", name=name)(x)


def build_cnn(learning_rate: float, total_steps: int, filters: int, units: int, dropout: float,
              shift_px: int, members: int, member_kernels: tuple[int, ...] | None = None,
              ema_momentum: float | None = None):
    """The cnn as it trains: an output per member and their average, "ensemble" (for one member,
    that member). Each member learns from its own label-smoothed loss, so that they differ; the
    average's loss weighs nothing and is only watched. `shipped_model` is what gets stored.
    `member_kernels` (one conv kernel size per member) and `ema_momentum` (Adam's weight averaging)
    are for experiments (bench/cnn_trials.py, docs/cnn.md); the recipe uses neither."""
    import keras
    from keras import layers

    kernels = tuple(member_kernels or (CNN_KERNEL,) * members)
    if len(kernels) != members:
        raise ValueError(f"member_kernels names {len(kernels)} kernel sizes for {members} members; give one per member")
    inputs = keras.Input((28, 28))
    stem = cnn_stem(inputs, filters, shift_px)
    if members == 1:
        outputs = {"ensemble": cnn_member(stem, filters, units, dropout, "ensemble", kernels[0])}
    else:
        heads = {f"member_{i}": cnn_member(stem, filters, units, dropout, f"member_{i}", k)
                 for i, k in enumerate(kernels)}
        outputs = {**heads, "ensemble": layers.Average(name="ensemble")(list(heads.values()))}
    model = keras.Model(inputs, outputs, name="mnist_cnn")
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=CNN_LABEL_SMOOTHING)
    averaging = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    model.compile(optimizer=keras.optimizers.Adam(one_cycle(learning_rate, max(1, total_steps)), **averaging),
                  loss={name: smoothed for name in outputs},
                  loss_weights={name: 0.0 if name == "ensemble" and members > 1 else 1.0 for name in outputs},
                  # what the shipped model scores: accuracy and plain cross-entropy (the test loss's
                  # measure; the smoothed loss never goes below ~0.5)
                  metrics={"ensemble": ["accuracy", keras.metrics.CategoricalCrossentropy(name="cross_entropy")]},
                  steps_per_execution=STEPS_PER_EXECUTION, jit_compile=False)
    return model


def build_model(kind: str, total_steps: int = 1, hyperparameters: dict | None = None):
    """The model of `kind`, compiled for training. `hyperparameters` is a point of the search
    space (mnist_pipeline/search_space.py: learning_rate, units, dropout; for the cnn filters,
    augment_shift_px and members, and for experiments member_kernels and ema_momentum); what it
    leaves out is the recipe's default."""
    hp = {**default_values(kind), **(hyperparameters or {})}
    if kind == "cnn":
        return build_cnn(float(hp["learning_rate"]), total_steps, filters=int(hp["filters"]), units=int(hp["units"]),
                         dropout=float(hp["dropout"]), shift_px=int(hp["augment_shift_px"]),
                         members=int(hp["members"]), member_kernels=hp.get("member_kernels"),
                         ema_momentum=hp.get("ema_momentum"))
    return build_mlp(float(hp["learning_rate"]), int(hp["units"]), float(hp["dropout"]))


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


# -- threads ---------------------------------------------------------------------------------------

def use_threads_for(kind: str, threads: int | None = None) -> None:
    """The MLP's matrices (32x784 by 784x128) are too small to split across cores: one intra-op
    and one inter-op thread (which is also what lets two tuning workers on two cores run two
    trials at full speed). The cnn gains from every core: `threads` (a tuning worker's share), else
    TensorFlow's default. TensorFlow fixes this at its first op: a speed setting, not the maths."""
    import tensorflow as tf

    wanted = 1 if kind == "mlp" else (threads or 0)
    config = tf.config.threading
    try:
        if config.get_intra_op_parallelism_threads() != wanted:
            config.set_intra_op_parallelism_threads(wanted)
        if config.get_inter_op_parallelism_threads() != wanted:
            config.set_inter_op_parallelism_threads(wanted)
    except RuntimeError:
        pass  # TensorFlow already ran in this process (tests, a long-lived worker)


# -- fitting ---------------------------------------------------------------------------------------

@dataclass
class Fitted:
    model: object  # the shipped model (mnist_pipeline.model.shipped_model)
    history: dict[str, list[float]]  # per-epoch, under plain names (loss, accuracy, val_...)
    seconds: float
    weights: str  # which weights the model holds, for the report and the manifest


def _epoch_callback(on_epoch: Callable[[int, dict], None]):
    import keras

    class EpochReport(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            on_epoch(epoch + 1, dict(plain_logs(logs or {}), seconds=time.perf_counter() - self._t0))

    return EpochReport()


def _callbacks(model, on_epoch) -> tuple[list, str]:
    """Keras callbacks for fit, and which weights the model will hold once fit returns."""
    import keras

    callbacks = [keras.callbacks.TerminateOnNaN()] + ([_epoch_callback(on_epoch)] if on_epoch else [])
    if not model.optimizer.use_ema:
        members = _output_names(model)[:-1]
        return callbacks, "those after the last epoch" + (
            f"; the output is the average of {len(members)} networks'" if members else "")
    # Validate the averaged weights, the ones Keras leaves in the model at the end of fit: the
    # learning curves then show the model that is evaluated and stored.
    return ([keras.callbacks.SwapEMAWeights(), *callbacks],
            f"moving average over the training steps (momentum {model.optimizer.ema_momentum:g})")


def fit(model, x_train: np.ndarray, y_train: np.ndarray, *, epochs: int, batch_size: int,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> Fitted:
    """Fit `model` and check the result: a loss that became NaN or infinite (TerminateOnNaN stops
    the fit there) is TrainingDiverged, in one line; otherwise the shipped model and its curves."""
    callbacks, weights = _callbacks(model, on_epoch)
    started = time.perf_counter()
    result = model.fit(as_tensor(x_train), training_targets(model, y_train), epochs=epochs,
                       batch_size=batch_size, shuffle=True, verbose=0, callbacks=callbacks,
                       validation_data=None if validation is None else
                       (as_tensor(validation[0]), training_targets(model, validation[1])))
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in plain_logs(result.history).items()}
    losses = history.get("loss", [])
    if len(losses) < epochs or not all(math.isfinite(v) for v in losses):
        raise TrainingDiverged(f"training diverged: loss became NaN/inf at epoch {len(losses)}; "
                               "nothing was stored; lower learning_rate and rerun")
    return Fitted(shipped_model(model), history, seconds, weights)


# -- predicting ------------------------------------------------------------------------------------

def predict_probabilities(model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Forward passes in large batches, eagerly: `model.predict` would first trace a predict
    function (a large share of this process's peak memory) to run ten batches."""
    return np.concatenate([np.asarray(model(as_tensor(images[i:i + batch_size]), training=False))
                           for i in range(0, len(images), batch_size)])


def measured_accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy as the flow's evaluate stage measures it (same batches, same rounding)."""
    return measured_scores(model, images, labels)[0]


def measured_scores(model, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """Test accuracy, and each digit's recall rounded as the evaluate stage's per-class metrics."""
    predicted = predict_probabilities(model, images).argmax(axis=1)
    right = predicted == labels
    recall = {str(d): round(float(right[labels == d].mean()), 5) for d in range(10) if (labels == d).any()}
    return round(float(np.mean(right)), 6), recall


# -- saving and loading ----------------------------------------------------------------------------

def model_to_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def model_from_bytes(data: bytes, what: str = "model"):
    """Load with safe_mode=True: a model carrying code (a Lambda layer) is refused, not run."""
    import keras

    if not zipfile.is_zipfile(io.BytesIO(data)):  # Keras would say "File not found" of its temp copy
        raise UnsafeModel(f"{what} does not load as a Keras model: it is not a .keras file (a zip archive)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            return keras.saving.load_model(path, safe_mode=True, compile=False)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "Lambda" in str(exc):
                raise UnsafeModel(f"{what} contains arbitrary code (e.g. a Lambda layer) and was "
                                  "refused by Keras safe mode") from None
            raise UnsafeModel(f"{what} does not load as a Keras model: {_one_line(exc, tmp, what)}") from None
        except Exception as exc:  # corrupt zip, missing weights, ...
            raise UnsafeModel(f"{what} does not load as a Keras model: {type(exc).__name__}: "
                              f"{_one_line(exc, tmp, what)}") from None


def _one_line(exc: Exception, tmp: str, what: str, limit: int = 300) -> str:
    """Keras's message, naming the stored object rather than its temporary copy, on one line."""
    text = " ".join(str(exc).replace(str(Path(tmp) / "model.keras"), what).replace(tmp, "(temporary folder)").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
