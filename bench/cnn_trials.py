"""The cnn's experiment harness (docs/cnn.md): the pipeline's own data stages and model module,
one variation of the recipe per run, seeds 42-44 by default, one JSON line per seed.

    python bench/cnn_trials.py --mirror ../shared/data/mnist --epochs 15 --precision mixed_bfloat16 \
        [--filters 24] [--units 256] [--members 3] [--learning-rate 0.006] [--label NAME]

Like `flows/train_flow.py --model cnn --seed S`: the split of seed S, Keras's seed S, the recipe's
build and fit (mnist_pipeline/model.py), test accuracy as the evaluate stage measures it. Without
Prefect, so the figure is the model's alone. Appends to bench/results/cnn-trials.jsonl.
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
    ap.add_argument("--label", default="")
    args = ap.parse_args()

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
    hp = {k: getattr(args, k) for k in ("filters", "units", "members", "dropout", "augment_shift_px")
          if getattr(args, k) is not None}
    use_threads_for("cnn")
    keras.mixed_precision.set_global_policy(args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        arrays, _ = validate_mnist(fetch_mnist(LocalStore(tmp), (args.mirror,)))
    results, out = [], REPO / "bench" / "results" / "cnn-trials.jsonl"
    for seed in [int(s) for s in args.seeds.split(",")]:
        splits = normalize_and_split(arrays, DEFAULT_VALIDATION_SIZE, seed)
        keras.utils.set_random_seed(seed)
        steps = epochs * math.ceil(len(splits.x_train) / batch)
        model = build_model("cnn", steps, {"learning_rate": peak, **hp})
        t0 = time.perf_counter()
        fitted = fit(model, splits.x_train, splits.y_train, epochs=epochs, batch_size=batch,
                     validation=(splits.x_val, splits.y_val))
        seconds = time.perf_counter() - t0
        accuracy = measured_accuracy(fitted.model, splits.x_test, splits.y_test)
        if args.precision != "float32":  # what would be stored: the same weights computing in float32
            keras.mixed_precision.set_global_policy("float32")
            as_float32 = build_model("cnn", steps, {"learning_rate": peak, **hp})
            as_float32.set_weights(model.get_weights())
            accuracy_float32 = measured_accuracy(shipped_model(as_float32), splits.x_test, splits.y_test)
            keras.mixed_precision.set_global_policy(args.precision)
        else:
            accuracy_float32 = accuracy
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "label": args.label,
               "cpu": cpu(), "python": platform.python_version(), "keras": keras.__version__,
               "precision": args.precision, "epochs": epochs, "batch_size": batch, "learning_rate": peak,
               "hyperparameters": hp, "seed": seed, "test_accuracy": accuracy,
               "test_accuracy_float32": accuracy_float32, "fit_seconds": round(seconds, 1)}
        results.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed}: {accuracy:.4f} (in float32 {accuracy_float32:.4f}) in {seconds:.1f} s",
              flush=True)
    accs, accs32 = [r["test_accuracy"] for r in results], [r["test_accuracy_float32"] for r in results]
    fits = [r["fit_seconds"] for r in results]
    print(f"{args.label or hp} {args.precision} {epochs} epochs: mean {statistics.mean(accs):.5f} "
          f"({' / '.join(f'{a:.4f}' for a in accs)}), in float32 {statistics.mean(accs32):.5f}, "
          f"fit {min(fits)}-{max(fits)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
