"""validate: IDX headers, shapes, dtypes, label range and class balance, before any training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnist_pipeline.dataset import IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from mnist_pipeline.errors import DatasetError
from tasks.stage import stage

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "MnistArrays", "parse_idx", "validate_mnist", "validate_task"]
EXPECTED_COUNTS = {"train": 60_000, "t10k": 10_000}


@dataclass(frozen=True)
class MnistArrays:
    """uint8 views over the raw IDX bytes: no copy is made until normalisation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def validate_mnist(raw: dict[str, bytes]) -> tuple[MnistArrays, dict]:
    """Parsed arrays and a small data profile for the report; DatasetError on anything off."""
    arrays = {}
    for split, count in EXPECTED_COUNTS.items():
        images = parse_idx(f"{split}-images-idx3-ubyte", raw[f"{split}-images-idx3-ubyte"], IMAGES_MAGIC)
        labels = parse_idx(f"{split}-labels-idx1-ubyte", raw[f"{split}-labels-idx1-ubyte"], LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{split} images are {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise DatasetError(f"{split}: {len(images)} images but {len(labels)} labels; "
                               "the image and label files do not belong together")
        if len(images) != count:
            raise DatasetError(f"{split}: {len(images)} samples, expected {count}")
        if labels.max(initial=0) > 9:
            bad = int(np.count_nonzero(labels > 9))
            raise DatasetError(f"{split} labels: {bad} outside 0-9 (max {int(labels.max())})")
        counts = np.bincount(labels, minlength=10)
        if (counts == 0).any():
            raise DatasetError(f"{split}: no sample of class(es) {np.flatnonzero(counts == 0).tolist()}")
        arrays[split] = (images, labels, counts)
    (xtr, ytr, ctr), (xte, yte, cte) = arrays["train"], arrays["t10k"]
    profile = {
        "train_samples": int(len(xtr)),
        "test_samples": int(len(xte)),
        "train_class_counts": ctr.tolist(),
        "test_class_counts": cte.tolist(),
        "train_pixel_mean": round(float(xtr.mean(dtype=np.float64)) / 255.0, 5),
        "test_pixel_mean": round(float(xte.mean(dtype=np.float64)) / 255.0, 5),
        "image_shape": [28, 28],
        "dtype": "uint8",
    }
    return MnistArrays(xtr, ytr, xte, yte), profile


@stage("validate")
def validate_task(raw: dict[str, bytes]) -> tuple[MnistArrays, dict]:
    return validate_mnist(raw)
