"""normalize: pixels to float32 in [0, 1], and a seeded validation split off the training set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.errors import ConfigError
from tasks.validate import MnistArrays


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray  # float32, (n, 28, 28)
    y_train: np.ndarray  # uint8
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray  # used only for the final evaluation and the gate
    y_test: np.ndarray


def to_unit_float32(images: np.ndarray) -> np.ndarray:
    # Multiply into a float32 buffer: `images / 255.0` would build a float64 copy first (4x memory).
    out = np.empty(images.shape, dtype=np.float32)
    np.multiply(images, np.float32(1.0 / 255.0), out=out, dtype=np.float32)
    return out


def normalize_and_split(data: MnistArrays, validation_size: int = 5000, seed: int = 42) -> Splits:
    n = len(data.x_train)
    if not 0 < validation_size < n:
        raise ConfigError(f"validation_size {validation_size} must be between 1 and {n - 1}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:validation_size]), np.sort(order[validation_size:])
    # Gather the uint8 rows first, then convert: one float32 copy per split, no full-size detour.
    return Splits(
        x_train=to_unit_float32(data.x_train[train_idx]), y_train=data.y_train[train_idx],
        x_val=to_unit_float32(data.x_train[val_idx]), y_val=data.y_train[val_idx],
        x_test=to_unit_float32(data.x_test), y_test=np.asarray(data.y_test),
    )


@task(name="normalize", cache_policy=NO_CACHE)
def normalize_task(data: MnistArrays, validation_size: int, seed: int) -> Splits:
    return normalize_and_split(data, validation_size, seed)
