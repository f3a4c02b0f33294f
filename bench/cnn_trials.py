"""The cnn's experiment harness (docs/cnn.md): the pipeline's own data stages and model module,
one variation of the recipe per run, seeds 42-44 by default, one JSON line per seed.

    python bench/cnn_trials.py --mirror ../shared/data/mnist --epochs 15 --precision mixed_bfloat16 \
        [--filters 24] [--units 256] [--members 3] [--learning-rate 0.006] [--label NAME] \
        [--member-kernels 5,3,3] [--member-filters 48] [--ema 0.995] [--train-on-validation] [--tta] [--elastic 1.0] \
        [--clean-epochs 1] [--recalibrate] [--bagging] [--deskew image|channel]

Like `flows/train_flow.py --model cnn --seed S`: the split of seed S, Keras's seed S, the recipe's
build and fit (mnist_pipeline/model.py), test accuracy as the evaluate stage measures it. Without
Prefect, so the figure is the model's alone. Appends to bench/results/cnn-trials.jsonl.
Variations the pipeline does not ship: --train-on-validation also trains on the 5,000 images the
split holds out (no validation curves then); --tta also scores the average of the predictions for
each test image and its four 1-pixel shifts (test-time augmentation); --elastic A replaces the
recipe's random shifts by the same shifts plus a smooth random displacement field (Simard et al.
2003) of A pixels' standard deviation, `ElasticShift` below; --member-filters N gives each member's
conv N filters instead of twice the stem's; --clean-epochs K trains the last K epochs on the images
as they are (the random shifts stop), `use_clean_final_epochs` below; --recalibrate also scores
the same trained model once batch norm's statistics are recomputed for its final weights,
`recalibrate_batch_norm` below; --bagging weighs each training image in each member's loss by its
own Poisson(1) draw (a bootstrap sample per member, Breiman 1996), `use_bagging` below; --deskew
shears each image upright by its moments before the shifts, in training and test (or adds that
copy as a second channel), `use_deskew` below.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", required=True)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--learning-rate", type=float, default=None)
    ap.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    ap.add_argument("--filters", type=int)
    ap.add_argument("--units", type=int)
    ap.add_argument("--members", type=int)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--shift", type=int, dest="augment_shift_px")
    ap.add_argument("--member-kernels", type=lambda v: tuple(int(k) for k in v.split(",")),
                    help="one conv kernel size per member, e.g. 5,3,3 (sets --members)")
    ap.add_argument("--ema", type=float, dest="ema_momentum", help="Adam's weight averaging, e.g. 0.995")
    ap.add_argument("--train-on-validation", action="store_true")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--elastic", type=float, default=0.0, metavar="PIXELS",
                    help="standard deviation of the elastic displacement, e.g. 1.0 (0: the recipe's shifts)")
    ap.add_argument("--elastic-grid", type=int, default=4, help="control points per side of the field")
    ap.add_argument("--member-filters", type=int, default=None,
                    help="filters of each member's conv (the recipe: twice --filters)")
    ap.add_argument("--clean-epochs", type=int, default=0, metavar="K",
                    help="the last K epochs without the random shifts (0: shifts throughout, the recipe)")
    ap.add_argument("--cutout", type=int, default=0, metavar="PIXELS",
                    help="while training, a square of this side zeroed at a random place (cutout)")
    ap.add_argument("--cutout-probability", type=float, default=0.5, help="share of the images cut")
    ap.add_argument("--recalibrate", action="store_true",
                    help="also score the model with batch norm's statistics recomputed on the training images")
    ap.add_argument("--bagging", action="store_true",
                    help="each member's loss weighs each training image by its own Poisson(1) draw")
    ap.add_argument("--deskew", choices=("image", "channel"), default=None,
                    help="shear each image upright by its moments, in training and test (`use_deskew`): "
                         "instead of the image, or as a second channel beside it")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.member_kernels:
        args.members = len(args.member_kernels)
    if args.clean_epochs and (args.elastic or args.augment_shift_px == 0 or args.clean_epochs < 0):
        ap.error(f"--clean-epochs {args.clean_epochs}: needs the random shifts (not --elastic, not --shift 0)")
    if args.deskew and (args.elastic or args.cutout):
        ap.error("--deskew: not with --elastic or --cutout (each replaces the cnn's stem)")
    if args.cutout and (args.elastic or not 1 <= args.cutout <= 28 or not 0 < args.cutout_probability <= 1):
        ap.error(f"--cutout {args.cutout}: a side of 1-28 pixels, a probability in (0, 1], without --elastic "
                 "(both replace the cnn's stem)")
    if args.bagging and (args.members or 2) < 2:
        ap.error("--bagging: needs two members or more (each gets its own bootstrap sample)")
    if args.member_filters and args.member_filters % 2:
        ap.error(f"--member-filters {args.member_filters}: give an even number (the member's conv is built as twice a width)")

    from mnist_pipeline.startup import prepare_tensorflow
    prepare_tensorflow()
    import keras

    from bench.run import cpu
    from mnist_pipeline.model import build_model, fit, measured_accuracy, shipped_model, use_threads_for
    from mnist_pipeline.params import DEFAULT_VALIDATION_SIZE, MODEL_DEFAULTS
    from mnist_pipeline.store import LocalStore
    from tasks.fetch import fetch_mnist
    from tasks.normalize import normalize_and_split
    from tasks.validate import validate_mnist

    defaults = MODEL_DEFAULTS["cnn"]
    epochs = args.epochs or defaults["epochs"]
    batch = args.batch_size or defaults["batch_size"]
    peak = args.learning_rate or defaults["learning_rate"]
    if args.clean_epochs >= epochs:
        ap.error(f"--clean-epochs {args.clean_epochs}: give fewer than the {epochs} epochs")
    hp = {k: getattr(args, k) for k in ("filters", "units", "members", "dropout", "augment_shift_px",
                                        "member_kernels", "ema_momentum") if getattr(args, k) is not None}
    use_threads_for("cnn")
    if args.elastic:
        use_elastic_shifts(args.elastic, args.elastic_grid)
        hp_label = {"elastic_px": args.elastic, "elastic_grid": args.elastic_grid}
    else:
        hp_label = {}
    if args.member_filters:
        use_member_filters(args.member_filters)
        hp_label["member_filters"] = args.member_filters
    if args.cutout:
        use_cutout(args.cutout, args.cutout_probability)
        hp_label.update(cutout_px=args.cutout, cutout_probability=args.cutout_probability)
    if args.bagging:
        hp_label["bagging"] = "poisson"
    if args.deskew:
        use_deskew(args.deskew == "channel")
        hp_label["deskew"] = args.deskew
    if args.clean_epochs:
        use_clean_final_epochs(args.clean_epochs, epochs)
        hp_label["clean_epochs"] = args.clean_epochs
    keras.mixed_precision.set_global_policy(args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        arrays, _ = validate_mnist(fetch_mnist(LocalStore(tmp), (args.mirror,)))
    results, out = [], REPO / "bench" / "results" / "cnn-trials.jsonl"
    for seed in [int(s) for s in args.seeds.split(",")]:
        splits = normalize_and_split(arrays, DEFAULT_VALIDATION_SIZE, seed)
        x_train, y_train, validation = splits.x_train, splits.y_train, (splits.x_val, splits.y_val)
        if args.train_on_validation:
            x_train, y_train = np.concatenate([x_train, splits.x_val]), np.concatenate([y_train, splits.y_val])
            validation = None
        keras.utils.set_random_seed(seed)
        steps = epochs * math.ceil(len(x_train) / batch)
        model = build_model("cnn", steps, {"learning_rate": peak, **hp})
        if args.bagging:
            use_bagging(model, len(x_train), seed)
        t0 = time.perf_counter()
        fitted = fit(model, x_train, y_train, epochs=epochs, batch_size=batch, validation=validation)
        seconds = time.perf_counter() - t0
        accuracy = measured_accuracy(fitted.model, splits.x_test, splits.y_test)
        tta = shifted_accuracy(fitted.model, splits.x_test, splits.y_test) if args.tta else None
        if args.precision != "float32":  # what would be stored: the same weights computing in float32
            keras.mixed_precision.set_global_policy("float32")
            as_float32 = build_model("cnn", steps, {"learning_rate": peak, **hp})
            as_float32.set_weights(model.get_weights())
            accuracy_float32 = measured_accuracy(shipped_model(as_float32), splits.x_test, splits.y_test)
            keras.mixed_precision.set_global_policy(args.precision)
        else:
            accuracy_float32 = accuracy
        # after the float32 copy, which scores the weights as fit left them
        recalibrated = recalibration_seconds = None
        if args.recalibrate:
            t1 = time.perf_counter()
            recalibrate_batch_norm(fitted.model, x_train)
            recalibration_seconds = round(time.perf_counter() - t1, 1)
            recalibrated = measured_accuracy(fitted.model, splits.x_test, splits.y_test)
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "label": args.label,
               "cpu": cpu(), "python": platform.python_version(), "keras": keras.__version__,
               "precision": args.precision, "epochs": epochs, "batch_size": batch, "learning_rate": peak,
               "hyperparameters": {**hp, **hp_label}, "train_on_validation": args.train_on_validation,
               "training_images": len(x_train), "seed": seed, "test_accuracy": accuracy, "tta_accuracy": tta,
               "test_accuracy_float32": accuracy_float32, "fit_seconds": round(seconds, 1)}
        if args.recalibrate:
            row.update(recalibrated_accuracy=recalibrated, recalibration_seconds=recalibration_seconds)
        results.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed}: {accuracy:.4f} (in float32 {accuracy_float32:.4f}"
              f"{f', with TTA {tta:.4f}' if tta is not None else ''}"
              f"{f', recalibrated {recalibrated:.4f} in {recalibration_seconds} s' if args.recalibrate else ''})"
              f" in {seconds:.1f} s", flush=True)
    accs, accs32 = [r["test_accuracy"] for r in results], [r["test_accuracy_float32"] for r in results]
    fits = [r["fit_seconds"] for r in results]
    print(f"{args.label or hp} {args.precision} {epochs} epochs: mean {statistics.mean(accs):.5f} "
          f"({' / '.join(f'{a:.4f}' for a in accs)}), in float32 {statistics.mean(accs32):.5f}, "
          f"fit {min(fits)}-{max(fits)} s")
    if args.tta:
        print(f"with TTA: mean {statistics.mean(r['tta_accuracy'] for r in results):.5f}")
    if args.recalibrate:
        print(f"recalibrated: mean {statistics.mean(r['recalibrated_accuracy'] for r in results):.5f}")
    return 0


def use_elastic_shifts(alpha_px: float, grid: int) -> None:
    """Makes the model module's cnn stem use ElasticShift instead of RandomTranslation (an
    experiment: the shipped recipe is untouched unless it pays, docs/cnn.md)."""
    import keras
    from keras import layers

    import mnist_pipeline.model as model_module

    class ElasticShift(layers.Layer):
        """While training: each image moved by a uniform shift of up to `shift_px` pixels (as
        RandomTranslation) plus a smooth displacement field, normal noise of `alpha_px` pixels on a
        grid x grid lattice upsampled bicubically to 28x28; sampled bilinearly, zeros outside.
        Batched: four gathers per image, no per-image Python."""

        def __init__(self, shift_px, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.shift_px = float(shift_px)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=None):
            import tensorflow as tf

            if not training:
                return x
            n = tf.shape(x)[0]
            coarse = keras.random.normal((n, grid, grid, 2), stddev=alpha_px, seed=self.seed_generator)
            field = tf.image.resize(coarse, (28, 28), method="bicubic")
            shift = keras.random.uniform((n, 1, 1, 2), -self.shift_px, self.shift_px, seed=self.seed_generator)
            rows, cols = tf.meshgrid(tf.range(28.0), tf.range(28.0), indexing="ij")
            y = rows[None] + field[..., 0] + shift[..., 0] + 1.0  # +1: the zero border below
            xx = cols[None] + field[..., 1] + shift[..., 1] + 1.0
            y, xx = tf.clip_by_value(y, 0.0, 29.0), tf.clip_by_value(xx, 0.0, 29.0)
            y0, x0 = tf.floor(y), tf.floor(xx)
            wy, wx = y - y0, xx - x0
            y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
            y1, x1 = tf.minimum(y0 + 1, 29), tf.minimum(x0 + 1, 29)
            flat = tf.reshape(tf.pad(x[..., 0], ((0, 0), (1, 1), (1, 1))), (-1,))
            base = (tf.range(n) * 900)[:, None, None]

            def at(r, c):
                return tf.gather(flat, base + r * 30 + c)
            out = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
                   + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
            return out[..., None]

    def elastic_stem(x, filters: int, shift_px: int):
        x = layers.Reshape((28, 28, 1))(x)
        x = ElasticShift(shift_px)(x)
        return model_module._conv_block(x, filters)

    model_module.cnn_stem = elastic_stem


def use_clean_final_epochs(clean: int, epochs: int) -> None:
    """Makes the model module's fit stop the random shifts for the last `clean` epochs (an
    experiment, as `use_elastic_shifts`): the test digits are centred, as the training ones are
    before augmentation. Keras looks the train function up at every step, so a callback can set
    the shift range to zero and trace it again at the start of an epoch."""
    import keras

    import mnist_pipeline.model as model_module

    class CleanFinish(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch != epochs - clean:
                return
            shifts = [layer for layer in self.model.layers if isinstance(layer, keras.layers.RandomTranslation)]
            if not shifts:
                raise RuntimeError("--clean-epochs: the model has no RandomTranslation layer")
            for layer in shifts:
                layer.height_lower = layer.height_upper = layer.width_lower = layer.width_upper = 0.0
            self.model.make_train_function(force=True)

    base = model_module._callbacks

    def with_clean_finish(model, on_epoch):
        callbacks, weights = base(model, on_epoch)
        return [*callbacks, CleanFinish()], weights

    model_module._callbacks = with_clean_finish


def use_cutout(side: int, probability: float) -> None:
    """Makes the model module's cnn stem zero a `side` x `side` square, centred anywhere on the
    image, in a `probability` share of the training images, after the shifts (an experiment, as
    `use_elastic_shifts`): the digit must be recognised from what remains of its strokes."""
    import keras
    from keras import layers

    import mnist_pipeline.model as model_module

    class Cutout(layers.Layer):
        def __init__(self, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=None):
            import tensorflow as tf

            if not training:
                return x
            n = tf.shape(x)[0]
            centre = keras.random.randint((n, 1, 1, 2), 0, 28, seed=self.seed_generator)
            cut = keras.random.uniform((n, 1, 1), seed=self.seed_generator) < probability
            rows, cols = tf.meshgrid(tf.range(28), tf.range(28), indexing="ij")
            dy, dx = rows[None] - centre[..., 0] + side // 2, cols[None] - centre[..., 1] + side // 2
            inside = (dy >= 0) & (dy < side) & (dx >= 0) & (dx < side)
            return x * tf.cast(~(inside & cut), x.dtype)[..., None]

    def stem_with_cutout(x, filters: int, shift_px: int):
        x = layers.Reshape((28, 28, 1))(x)
        if shift_px:
            x = layers.RandomTranslation(shift_px / 28, shift_px / 28, fill_mode="constant")(x)
        x = Cutout()(x)
        return model_module._conv_block(x, filters)

    model_module.cnn_stem = stem_with_cutout


class _DeskewMixin:
    """Shears each image so that its strokes' principal axis is upright and moves its centre of
    mass to the middle (LeCun et al.'s "deskewing"; the moments of the pixel intensities), in
    training and at test time alike: the variance of slant within a digit is taken out of the task."""

    @staticmethod
    def deskew(x):
        import keras
        from keras import ops

        images = ops.cast(x[..., 0], "float32")  # (n, 28, 28)
        rows = ops.reshape(ops.arange(28, dtype="float32"), (1, 28, 1))
        cols = ops.reshape(ops.arange(28, dtype="float32"), (1, 1, 28))
        total = ops.sum(images, axis=(1, 2)) + 1e-6
        r = ops.sum(images * rows, axis=(1, 2)) / total
        c = ops.sum(images * cols, axis=(1, 2)) / total
        dr, dc = rows - r[:, None, None], cols - c[:, None, None]
        var_r = ops.sum(images * dr * dr, axis=(1, 2)) / total + 1e-6
        cov = ops.sum(images * dr * dc, axis=(1, 2)) / total
        alpha = cov / var_r
        centre = 14.0
        # output (col, row) -> input (col + alpha * (row - 14) + c - 14, row + r - 14)
        zeros, ones = ops.zeros_like(alpha), ops.ones_like(alpha)
        transform = ops.stack([ones, alpha, c - centre - alpha * centre,
                               zeros, ones, r - centre, zeros, zeros], axis=1)
        out = keras.ops.image.affine_transform(images[..., None], transform, interpolation="bilinear",
                                               fill_mode="constant")
        return ops.cast(out, x.dtype)


def use_deskew(as_channel: bool = False) -> None:
    """Makes the model module's cnn stem deskew every image (`_DeskewMixin`) before the shifts;
    `as_channel`: the stem sees the image and its deskewed copy as two channels."""
    from keras import layers

    import mnist_pipeline.model as model_module

    class Deskew(_DeskewMixin, layers.Layer):
        def call(self, x):
            return layers.Concatenate()([x, self.deskew(x)]) if as_channel else self.deskew(x)

    def deskewed_stem(x, filters: int, shift_px: int):
        x = Deskew()(layers.Reshape((28, 28, 1))(x))
        if shift_px:
            x = layers.RandomTranslation(shift_px / 28, shift_px / 28, fill_mode="constant")(x)
        return model_module._conv_block(x, filters)

    model_module.cnn_stem = deskewed_stem


def use_member_filters(width: int) -> None:
    """Makes the model module's members use `width` filters in their conv (an experiment, as
    `use_elastic_shifts`): the recipe's member has twice the stem's."""
    import mnist_pipeline.model as model_module

    member = model_module.cnn_member

    def wider_member(x, filters, units, dropout, name, kernel=model_module.CNN_KERNEL):
        return member(x, width // 2, units, dropout, name, kernel)

    model_module.cnn_member = wider_member


def use_bagging(model, images: int, seed: int) -> None:
    """Makes this model's fit weigh each training image in each member's loss by a Poisson(1)
    draw of that member's own (an experiment: the members share the stem, the batches and the
    shifts, so their errors are alike; a bootstrap sample each is the classic way to make them
    differ). Fixed for the whole fit; the average's loss, which weighs nothing, keeps weight 1."""
    members = [name for name in model.output if name.startswith("member_")]
    draws = np.random.default_rng(seed).poisson(1.0, size=(len(members), images)).astype(np.float32)
    weights = {name: draws[i] for i, name in enumerate(members)}
    weights["ensemble"] = np.ones(images, np.float32)
    fit = model.fit

    def weighted_fit(*args, **kwargs):
        return fit(*args, sample_weight=weights, **kwargs)

    model.fit = weighted_fit


def recalibrate_batch_norm(model, images: np.ndarray, batch_size: int = 1000) -> None:
    """Sets each batch norm layer's moving mean and variance to its input's mean and (biased)
    variance over `images`, as they come (no shifts), computed with the model's final weights.
    With Adam's weight averaging the weights at the end of fit are an average over the last
    steps, while the moving statistics followed the raw weights step by step (docs/cnn.md, EMA
    0.999). Layers are done in rounds, upstream first: a layer's input depends on the statistics
    of the batch norm layers before it. Rounds here: the stem's, the members' convs', their dense
    layers' (the cnn's structure, checked first)."""
    import keras

    from mnist_pipeline.tensors import as_tensor

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    rounds = [norms[:1], [n for n in norms[1:] if len(n.input.shape) == 4], [n for n in norms[1:] if len(n.input.shape) == 2]]
    # the cnn's shape: one stem norm (on images), then per member one after its conv and one after its dense layer
    if (sum(map(len, rounds)) != len(norms) or len(norms[0].input.shape) != 4
            or len(rounds[1]) != len(rounds[2]) or not rounds[1]):
        raise RuntimeError("--recalibrate: the model's batch norm layers are not the cnn's (stem, then two per member)")
    for layers_now in rounds:
        probe = keras.Model(model.input, [n.input for n in layers_now])
        sums = [0.0] * len(layers_now)
        squares = [0.0] * len(layers_now)
        count = [0] * len(layers_now)
        for i in range(0, len(images), batch_size):
            outs = probe(as_tensor(images[i:i + batch_size]), training=False)
            for k, out in enumerate(outs if len(layers_now) > 1 else [outs]):
                out = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
                sums[k] += out.sum(axis=0)
                squares[k] += (out ** 2).sum(axis=0)
                count[k] += len(out)
        for k, norm in enumerate(layers_now):
            mean = sums[k] / count[k]
            norm.moving_mean.assign(mean.astype(np.float32))
            norm.moving_variance.assign(np.maximum(squares[k] / count[k] - mean ** 2, 0.0).astype(np.float32))


def shifted_accuracy(model, images, labels) -> float:
    """Accuracy of the average of the predictions for each image and its four 1-pixel shifts
    (zeros shifted in)."""
    from mnist_pipeline.model import predict_probabilities

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    views = [padded[:, 1 + dy:29 + dy, 1 + dx:29 + dx] for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    probabilities = sum(predict_probabilities(model, np.ascontiguousarray(v)) for v in views)
    return round(float(np.mean(probabilities.argmax(axis=1) == labels)), 6)


if __name__ == "__main__":
    sys.exit(main())
