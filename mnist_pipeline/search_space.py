"""The hyperparameter search space, declared once: what the oracle samples, what a trial builds,
and what docs/tuning.md and the tuning report show all come from SPACE below.

Each default reproduces the model the pipeline ships for that kind (mnist_pipeline/model.py: the
README MLP, the cnn), so a search always includes the neighbourhood of what `train_flow` ships;
the learning rate and batch size are each model's own (mnist_pipeline/params.py MODEL_DEFAULTS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mnist_pipeline.params import MODEL_DEFAULTS

ALGORITHMS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"  # scored on the validation split only; the test set is for the gate


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: its name in hp_values, how it is sampled, and what it changes."""

    name: str
    kind: Literal["float", "choice"]
    models: tuple[str, ...]  # which model kinds use it
    default: float | int
    meaning: str
    low: float | None = None  # float: the range (inclusive)
    high: float | None = None
    step: float | None = None  # float: grid step (None = continuous)
    log: bool = False  # float: sampled uniformly in log space
    values: tuple = ()  # choice: the candidates, in order (Bayesian treats them as ordinal)

    def describe(self) -> str:
        if self.kind == "choice":
            return ", ".join(str(v) for v in self.values)
        grid = f" step {self.step:g}" if self.step else ""
        return f"{self.low:g} to {self.high:g}{' log-uniform' if self.log else grid}"


SPACE: tuple[Dimension, ...] = (
    Dimension("learning_rate", "float", ("mlp", "cnn"), MODEL_DEFAULTS["mlp"]["learning_rate"], "Adam learning rate (cnn: the peak of its one-cycle schedule)",
              low=1e-4, high=1e-2, log=True),
    Dimension("units", "choice", ("mlp", "cnn"), 128,
              "width: first hidden Dense layer (MLP: the second has half as many)", values=(64, 128, 256, 512)),
    Dimension("dropout", "float", ("mlp", "cnn"), 0.0,
              "dropout after each hidden Dense layer (cnn: after its dense layer)",
              low=0.0, high=0.5, step=0.1),
    Dimension("batch_size", "choice", ("mlp", "cnn"), MODEL_DEFAULTS["mlp"]["batch_size"], "images per gradient step", values=(32, 64, 128, 256)),
    Dimension("filters", "choice", ("cnn",), 16, "filters of the first conv block (the second has twice as many)",
              values=(8, 16, 32)),
    Dimension("augment_shift_px", "choice", ("cnn",), 2,
              "augmentation: random shifts of up to this many pixels while training (0 = none)", values=(0, 1, 2, 3)),
    Dimension("members", "choice", ("cnn",), 2,
              "networks averaged (sharing their first conv block); each one after the first costs "
              "~0.8x a single network's time",
              values=(1, 2, 3)),
)
# The cnn's own learning rate and batch size (mnist_pipeline/params.py MODEL_DEFAULTS).
CNN_DEFAULTS = {k: MODEL_DEFAULTS["cnn"][k] for k in ("learning_rate", "batch_size")}


def dimensions_for(model_kind: str) -> tuple[Dimension, ...]:
    return tuple(d for d in SPACE if model_kind in d.models)


def default_values(model_kind: str) -> dict:
    """The hp_values that rebuild the shipped model of this kind."""
    values = {d.name: d.default for d in dimensions_for(model_kind)}
    if model_kind == "cnn":
        values.update(CNN_DEFAULTS)
    return values


def hyperparameters_for(model_kind: str):
    """A keras_tuner.HyperParameters holding this kind's space, for an oracle's `hyperparameters`."""
    import keras_tuner as kt

    defaults = default_values(model_kind)
    hp = kt.HyperParameters()
    for d in dimensions_for(model_kind):
        if d.kind == "choice":
            hp.Choice(d.name, list(d.values), default=defaults[d.name], ordered=True)
        else:
            hp.Float(d.name, d.low, d.high, step=d.step, sampling="log" if d.log else "linear",
                     default=defaults[d.name])
    return hp


def space_table(model_kind: str | None = None) -> list[dict]:
    """Rows for the docs and the tuning report: name, models, range or choices, default, meaning."""
    dims = SPACE if model_kind is None else dimensions_for(model_kind)
    rows = []
    for d in dims:
        default = d.default
        if model_kind == "cnn" and d.name in CNN_DEFAULTS:
            default = CNN_DEFAULTS[d.name]
        elif model_kind is None and d.name in CNN_DEFAULTS:
            default = f"{d.default:g} (cnn: {CNN_DEFAULTS[d.name]:g})"
        rows.append({"hyperparameter": d.name, "models": ", ".join(d.models), "values": d.describe(),
                     "default": default if isinstance(default, str) else f"{default:g}",
                     "meaning": d.meaning})
    return rows


def tuned_names(model_kind: str) -> list[str]:
    return [d.name for d in dimensions_for(model_kind)]
