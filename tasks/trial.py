"""A tuning trial: what a Dask worker runs. It trains one point of the search space on the
training split, with the pipeline's own model (mnist_pipeline/model.py), and scores it on the
validation split; the test set is never loaded for a trial."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.errors import TrainingDiverged
from mnist_pipeline.model import build_model, fit, predict_probabilities, use_threads_for
from mnist_pipeline.redaction import redact
from mnist_pipeline.search_space import default_values
from mnist_pipeline.startup import prepare_process

COMPLETED, FAILED = "COMPLETED", "FAILED"

# Keys Hyperband adds to a trial's values (its successive-halving bookkeeping), not model settings.
HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


@dataclass(frozen=True)
class DataSource:
    """Where a worker gets MNIST, and which split: small, so it travels with every trial instead
    of the arrays. Credentials are not in it: a worker reads AWS_* from its own environment."""

    store_url: str
    mirrors: tuple[str, ...]
    validation_size: int
    seed: int  # the split's seed: the same as the final run's, so validation is the same images
    train_limit: int | None = None  # first N training images (tests, benchmarks); None = all


@dataclass(frozen=True)
class TrialData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


# One dataset per worker process, loaded at its first trial: 190 MB is not shipped per trial.
_DATA_CACHE: dict[tuple, TrialData] = {}


def load_trial_data(source: DataSource) -> TrialData:
    """The training and validation splits, from the store cache (else the mirrors) through the
    pipeline's own fetch, validate and normalize; the test split is dropped at once."""
    key = (source.store_url, source.mirrors, source.validation_size, source.seed)
    data = _DATA_CACHE.get(key)
    if data is None:
        from mnist_pipeline.settings import load_settings
        from mnist_pipeline.store import open_store
        from tasks.fetch import fetch_mnist
        from tasks.normalize import normalize_and_split
        from tasks.validate import validate_mnist

        settings = load_settings(store_url=source.store_url, mirrors=source.mirrors)
        arrays, _ = validate_mnist(fetch_mnist(open_store(settings), settings.mirrors))
        splits = normalize_and_split(arrays, source.validation_size, source.seed)
        data = TrialData(splits.x_train, splits.y_train, splits.x_val, splits.y_val)
        _DATA_CACHE.clear()  # a worker keeps one dataset, not one per search it ever served
        _DATA_CACHE[key] = data
    if source.train_limit:
        n = source.train_limit
        data = TrialData(data.x_train[:n], data.y_train[:n], data.x_val, data.y_val)
    return data


def warm_worker(data_source: DataSource, model_kind: str, threads: int | None = None) -> float:
    """Import TensorFlow, set its threads and load the data, before any trial: run on every
    worker at once (client.run) so that the first trials do not each pay for it. Seconds taken."""
    started = time.perf_counter()
    prepare_process()
    load_trial_data(data_source)
    use_threads_for(model_kind, threads)
    import keras  # noqa: F401

    return round(time.perf_counter() - started, 3)


def current_worker() -> str:
    """The Dask worker running this code ("tcp://host:port"), or "local" outside Dask."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def validation_accuracy(model, data: TrialData) -> float:
    probs = predict_probabilities(model, data.x_val)
    if not np.isfinite(probs).all():
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == data.y_val))


def trial_epochs(hp_values: dict, epochs: int) -> int:
    """Hyperband sets each trial's budget in "tuner/epochs"; the other algorithms use `epochs`.
    A Hyperband trial that continues another one ("tuner/trial_id") is trained from scratch to
    its budget: no checkpoint has to travel between workers, at the cost of the epochs redone."""
    return int(hp_values.get("tuner/epochs", epochs))


def one_line(exc: BaseException) -> str:
    """A failed trial's reason, as the search records and reports it: any URL in it redacted."""
    try:
        text = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ fails still names its type
        text = []
    return redact(f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))


def run_trial(hp_values: dict, model_kind: str, epochs: int, seed: int, data_source: DataSource,
              threads: int | None = None) -> dict:
    """Train one configuration on the training split and score it on the validation split.

    Never raises for a bad trial: a diverged training or any error is returned as status FAILED
    with a one-line reason, so the search records it and goes on."""
    started = time.perf_counter()
    prepare_process()  # on a Dask worker, this may be the process's first call into the pipeline
    record = {"hyperparameters": dict(hp_values), "val_accuracy": None, "status": FAILED,
              "error": None, "worker": current_worker(), "pid": os.getpid(),
              "epochs": trial_epochs(hp_values, epochs), "seconds": None}
    try:
        data = load_trial_data(data_source)
        import keras

        keras.backend.clear_session()  # a long-lived worker must not accumulate earlier trials' graphs
        use_threads_for(model_kind, threads)
        keras.utils.set_random_seed(seed)
        point = {k: v for k, v in hp_values.items() if k not in HYPERBAND_KEYS}
        batch_size = int(point.get("batch_size", default_values(model_kind)["batch_size"]))
        steps = record["epochs"] * math.ceil(len(data.x_train) / batch_size)
        fitted = fit(build_model(model_kind, steps, point), data.x_train, data.y_train,
                     epochs=record["epochs"], batch_size=batch_size)
        accuracy = validation_accuracy(fitted.model, data)
        if math.isfinite(accuracy):
            record.update(val_accuracy=accuracy, status=COMPLETED)
        else:
            record["error"] = "the model's validation outputs are NaN/inf"
    except TrainingDiverged as exc:
        record["error"] = f"{exc} (learning_rate={hp_values.get('learning_rate')})"
    except Exception as exc:  # one bad trial must not end the search; the reason is recorded
        record["error"] = one_line(exc)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def earlier_starts() -> int | None:
    """How many times this task run started before, on a worker that was lost: Dask reruns the
    task with the same Prefect task run id, so its state history shows one Running per start.
    Best effort (None when the API cannot say): it only annotates the record."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        now = ctx.task_run.state.timestamp
        with get_client(sync_client=True) as client:
            states = client.read_task_run_states(ctx.task_run.id)
        return sum(1 for s in states if s.type.value == "RUNNING" and s.timestamp < now)
    except Exception:
        return None


@task(name="tune-trial", retries=0, cache_policy=NO_CACHE, task_run_name="trial {trial_id}")
def trial_task(trial_id: str, hp_values: dict, model_kind: str, epochs: int, seed: int,
               data_source: DataSource, threads: int | None = None) -> dict:
    """No retries: a failed trial is a result to record. A lost worker is Dask's business (it
    reruns the task on another worker, under the same task run id)."""
    return {"trial_id": trial_id, "earlier_starts": earlier_starts(),
            **run_trial(hp_values, model_kind, epochs, seed, data_source, threads)}

