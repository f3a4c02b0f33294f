"""Run parameters, defined once: each flow's signature (and so the Prefect UI's run form), its
command line and the deployments' defaults are derived from the models below, so a bad value is
refused the same way everywhere, before any work, and every default lives here only."""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_pipeline.errors import ConfigError

# What "empty" means for each model, in one place (the command line, the UI's form, the tuner):
# the README's MLP as written; the cnn's recipe, whose choices docs/cnn.md measures.
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
DEFAULT_MAX_REGRESSION = 0.005  # the champion rule's tolerance (mnist_pipeline/registry/gate.py)
DEFAULT_VALIDATION_SIZE = 5000
DEFAULT_SEED = 42

MaxRegression = Annotated[float, Field(
    ge=0.0, le=1.0, description="Refuse a candidate whose test accuracy is below production's by more than this.")]
AllowRegression = Annotated[bool, Field(
    description="Promote even if worse than production by more than max_regression (on purpose).")]
ValidationSize = Annotated[int, Field(
    ge=100, le=30000, description="Training images held out for validation (the test set is only for the gate).")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, description="Seed for the split, initial weights and shuffling.")]
LearningRate = Annotated[Optional[float], Field(
    gt=0.0, le=10.0, description="Peak learning rate. Empty: the model's default (README MLP: Adam at 0.001).")]
DataVersion = Annotated[Optional[int], Field(
    ge=0, le=999999, description="Train on MNIST plus the ingested dataset versions up to this one (0: MNIST "
                                 "alone). Empty: every version (`mnist-pipeline data` lists them).")]
MinNewDataAccuracy = Annotated[Optional[float], Field(
    ge=0.0, le=1.0, description="Gate: promote only if accuracy on the ingested versions' holdout images >= this. "
                                "Empty: not checked.")]
SkipUnchanged = Annotated[bool, Field(
    description="End at once, as Unchanged, when the dataset versions, code and parameters are those of "
                "production's run (the deployments set it).")]
MinClassRecall = Annotated[Optional[float], Field(
    ge=0.0, le=1.0, description="Gate: block a model whose recall on any digit is below this. "
                                "Empty: MNIST_MIN_CLASS_RECALL (unset: no per-digit gate).")]
RequireApproval = Annotated[bool, Field(
    description="Pause a run that passed the gate until a person approves it in the Prefect UI (needs a "
                "lasting Prefect server: a deployment, or PREFECT_API_URL).")]
DEFAULT_APPROVAL_TIMEOUT_S = 24 * 3600
ApprovalTimeout = Annotated[int, Field(
    ge=1, le=30 * 24 * 3600, description="Seconds to wait for an approval; then the run is Blocked.")]


class _RunParams(BaseModel):
    """What every run that ends at the gate shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelKind = "mlp"
    min_accuracy: MinAccuracy = None
    max_regression: MaxRegression = DEFAULT_MAX_REGRESSION
    allow_regression: AllowRegression = False
    validation_size: ValidationSize = DEFAULT_VALIDATION_SIZE
    seed: Seed = DEFAULT_SEED
    data_version: DataVersion = None
    min_new_data_accuracy: MinNewDataAccuracy = None
    min_class_recall: MinClassRecall = None
    require_approval: RequireApproval = False
    approval_timeout: ApprovalTimeout = DEFAULT_APPROVAL_TIMEOUT_S


GATE_PARAMETERS = tuple(_RunParams.model_fields)  # what a tuning run passes on to its candidate's pipeline


class TrainParams(_RunParams):
    """A training run (flows/train_flow.py)."""

    epochs: Epochs = None
    batch_size: BatchSize = None
    learning_rate: LearningRate = None
    skip_unchanged: SkipUnchanged = False

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


class TuneParams(_RunParams):
    """A hyperparameter search (flows/tune_flow.py), whose best candidate meets the same gate."""

    trials: Trials = 8
    max_parallel: MaxParallel = None
    epochs: TrialEpochs = 3
    algorithm: Algorithm = "random"
    train_limit: TrainLimit = None


def flow_parameters(schema: type[BaseModel], summary: str):
    """Give a flow function `def f(**parameters)` the signature of `schema`'s fields: Prefect builds
    the run form and validates a run's parameters from it. Its docstring gets an "Args:" section
    of the fields' descriptions, which Prefect shows in the form."""
    fields = schema.model_fields
    signature = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                          annotation=Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
        for name, field in fields.items()])

    def decorate(fn):
        fn.__signature__ = signature
        fn.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        fn.__doc__ = "\n".join([summary, "", "Args:", *(f"    {n}: {f.description}" for n, f in fields.items())])
        return fn
    return decorate


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (what is wrong, and where the usage
    is), exit status 2, instead of its usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _argument_type(annotation) -> type:
    """int, float or str: the value type of an Optional/Literal/Annotated field, for argparse."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
        return _argument_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return type(args[0])
    return annotation if annotation in (int, float, str) else str


def command_line(schema: type[BaseModel], description: str, epilog: str = "") -> argparse.ArgumentParser:
    """`--name-with-dashes` per field of `schema`, help from its description; an option left out
    is left out of the result, so the model's default applies (the one place defaults live)."""
    parser = OneLineArgumentParser(description=description, epilog=epilog, argument_default=argparse.SUPPRESS)
    for name, field in schema.model_fields.items():
        flag, help_text = "--" + name.replace("_", "-"), (field.description or "").replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = _argument_type(field.annotation)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else None
        parser.add_argument(flag, type=kind, help=help_text + (f" ({'|'.join(choices)})" if choices else ""),
                            metavar=name.upper())
    return parser


def parse_params(schema=None, /, **values):
    """TrainParams (or the `schema` given, e.g. TuneParams), or a one-line ConfigError naming the
    parameter and its allowed range."""
    try:
        return (schema or TrainParams)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "parameters"
        raise ConfigError(f"parameter {name}={err.get('input')!r} is invalid: {err['msg']}") from None
