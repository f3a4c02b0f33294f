"""Run parameters: one definition shared by the flow signature (the UI's run form), the command
line and the deployment, so a bad value is refused the same way everywhere, before any work."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal, NoReturn, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_pipeline.errors import ConfigError

# What "empty" means for each model, in one place (the command line, the UI's form, the tuner):
# the README's MLP as written; the cnn's recipe (docs/cnn.md): few epochs of large batches under
# a one-cycle learning rate. Batch 256 rather than 128: as accurate (0.9950 against 0.9944, seed
# 42, 6 epochs) with half the steps. Peak 0.004: 0.008 gave the same 0.9950. 10 epochs: with label
# smoothing one network gained from 7 to 10 (0.9951 to 0.9956, mean of seeds 42-44), and two
# averaged networks of 10 epochs scored 0.9961-0.9964 where two of 7 scored 0.9955-0.9960.
MODEL_DEFAULTS = {
    "mlp": {"epochs": 10, "batch_size": 32, "learning_rate": 0.001},
    "cnn": {"epochs": 10, "batch_size": 256, "learning_rate": 0.004},
}

Epochs = Annotated[Optional[int], Field(
    ge=1, le=500, description="Passes over the training set. Empty: the model's default (README MLP: 10).")]
BatchSize = Annotated[Optional[int], Field(
    ge=1, le=8192, description="Images per gradient step. Empty: the model's default (README MLP: 32).")]
ModelKind = Annotated[Literal["mlp", "cnn"], Field(
    description="mlp: the README model (Flatten, Dense 128, Dense 64, Dense 10). cnn: two small "
                "convolutional networks averaged, random shifts, a one-cycle learning rate: about 99.6% in 10 epochs.")]
MinAccuracy = Annotated[Optional[float], Field(
    ge=0.0, le=1.0, description="Gate: promote only if test accuracy >= this. Empty: MNIST_MIN_ACCURACY (0.97).")]
MaxRegression = Annotated[float, Field(
    ge=0.0, le=1.0, description="Refuse a candidate whose test accuracy is below production's by more than this.")]
AllowRegression = Annotated[bool, Field(
    description="Promote even if worse than production by more than max_regression (on purpose).")]
ValidationSize = Annotated[int, Field(
    ge=100, le=30000, description="Training images held out for validation (the test set is only for the gate).")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, description="Seed for the split, initial weights and shuffling.")]
LearningRate = Annotated[Optional[float], Field(
    gt=0.0, le=10.0, description="Peak learning rate. Empty: the model's default (README MLP: Adam at 0.001).")]


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Epochs = None
    batch_size: BatchSize = None
    model: ModelKind = "mlp"
    min_accuracy: MinAccuracy = None
    max_regression: MaxRegression = 0.005
    allow_regression: AllowRegression = False
    validation_size: ValidationSize = 5000
    seed: Seed = 42
    learning_rate: LearningRate = None

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: object) -> object:
        """An empty epochs, batch size or learning rate is the chosen model's default."""
        if not isinstance(values, dict):
            return values
        defaults = MODEL_DEFAULTS.get(values.get("model", "mlp"), {})
        return {**values, **{k: v for k, v in defaults.items() if values.get(k) is None}}


Trials = Annotated[int, Field(ge=1, le=1000, description="Trials to run (Hyperband: at most this many).")]
MaxParallel = Annotated[Optional[int], Field(
    ge=1, le=256, description="Trials in flight at once. Empty: one per Dask worker thread.")]
TrialEpochs = Annotated[int, Field(ge=1, le=500, description=(
    "Epochs per trial (Hyperband: the most any trial gets); the best candidate is trained as long as its trial."))]
Algorithm = Annotated[Literal["random", "bayesian", "hyperband"], Field(
    description="Keras Tuner's search algorithm: random, bayesian (Gaussian process) or hyperband.")]
TrainLimit = Annotated[Optional[int], Field(
    ge=100, le=55000, description="Trials train on the first N training images only (quick tests, benchmarks). "
                                  "Empty: all.")]


class TuneParams(BaseModel):
    """A hyperparameter search (flows/tune_flow.py); the gate's parameters as for a training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelKind = "mlp"
    trials: Trials = 8
    max_parallel: MaxParallel = None
    epochs: TrialEpochs = 3
    algorithm: Algorithm = "random"
    min_accuracy: MinAccuracy = None
    max_regression: MaxRegression = 0.005
    allow_regression: AllowRegression = False
    validation_size: ValidationSize = 5000
    seed: Seed = 42
    train_limit: TrainLimit = None


def documented_params(summary: str, schema=None):
    """Give a flow function a Google-style docstring of its parameters, before @flow reads it:
    Prefect puts the "Args:" section into the parameter schema that the UI's run form shows."""
    lines = [summary, "", "Args:"]
    fields = (schema or TrainParams).model_fields
    lines += [f"    {name}: {field.description}" for name, field in fields.items()]

    def decorate(fn):
        fn.__doc__ = "\n".join(lines)
        return fn
    return decorate


def parse_params(schema=None, /, **values):
    """TrainParams (or the `schema` given, e.g. TuneParams), or a one-line ConfigError naming the
    parameter and its allowed range."""
    try:
        return (schema or TrainParams)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "parameters"
        raise ConfigError(f"parameter {name}={err.get('input')!r} is invalid: {err['msg']}") from None


class OneLineParser(argparse.ArgumentParser):
    """The flows' command line: a bad option is one line naming it and what it wants, exit 2
    (argparse's own error prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")
