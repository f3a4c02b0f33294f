"""Hyperparameter search, then the training pipeline for its best candidate:
preflight -> fetch (the workers read the store's verified cache) -> search (Keras Tuner's oracle,
each trial a Prefect task on Dask, scored on the validation split) -> the pipeline of
flows/train_flow.py with the best trial's hyperparameters: train, evaluate (the test set, once),
plots, gate, report, store, promote.

`python flows/tune_flow.py --help`. Exit statuses as train_flow.py (flows/plumbing.py); a search in
which every trial failed is a one-line error, exit 1.
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from these
# annotations when a deployment loads the flow from its entrypoint; strings would not resolve.
from flows import plumbing  # first: it sets the environment Prefect and TensorFlow read

import argparse
import sys
from typing import Optional

from prefect import flow, get_run_logger

from flows.train_flow import run_pipeline
from mnist_pipeline.params import (AllowRegression, Algorithm, MaxParallel, MaxRegression, MinAccuracy,
                                   ModelKind, OneLineParser, Seed, TrainLimit, TrainParams, TrialEpochs, Trials,
                                   TuneParams, ValidationSize, documented_params, parse_params)
from mnist_pipeline.search_space import ALGORITHMS
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks.fetch import fetch_task
from tasks.gate import preflight_task
from tasks.search import run_search
from tasks.tune import DataSource, trial_epochs


# No flow retries: a retry would run the whole search again; trials that fail are recorded and
# skipped, and the candidate's pipeline fails or decides like any run.
@flow(name="mnist-tuning", retries=0, validate_parameters=True, on_failure=[plumbing.on_run_failed],
      description="Hyperparameter search with Keras Tuner, trials as tasks on Dask; the best "
                  "candidate then goes through the training pipeline's evaluation and gate.")
@documented_params("Search hyperparameters, then train, gate and maybe promote the best candidate.", TuneParams)
def tune_flow(
    model: ModelKind = "mlp",
    trials: Trials = 8,
    max_parallel: MaxParallel = None,
    epochs: TrialEpochs = 3,
    algorithm: Algorithm = "random",
    min_accuracy: MinAccuracy = None,
    max_regression: MaxRegression = 0.005,
    allow_regression: AllowRegression = False,
    validation_size: ValidationSize = 5000,
    seed: Seed = 42,
    train_limit: TrainLimit = None,
):
    p = TuneParams(model=model, trials=trials, max_parallel=max_parallel, epochs=epochs, algorithm=algorithm,
                   min_accuracy=min_accuracy, max_regression=max_regression, allow_regression=allow_regression,
                   validation_size=validation_size, seed=seed, train_limit=train_limit)
    log, run_id, settings = get_run_logger(), plumbing.current_run_id(), load_settings()
    store = open_store(settings)
    with plumbing.retried_only_if_transient():
        preflight_task(store)
        fetch_task(store, settings.mirrors, settings.deadline_s)  # the workers read the verified cache
        source = DataSource(store.url, settings.mirrors, p.validation_size, p.seed, p.train_limit)
        _, summary = run_search(p, settings.dask_address, store, run_id, source, log)
    best = summary["best"]
    log.info("best: trial %s, val_accuracy %.4f, %s", best["trial_id"], best["val_accuracy"], best["hyperparameters"])
    hp = best["hyperparameters"]
    params = TrainParams(model=p.model, epochs=trial_epochs(hp, p.epochs), batch_size=int(hp["batch_size"]),
                         learning_rate=float(hp["learning_rate"]), min_accuracy=p.min_accuracy,
                         max_regression=p.max_regression, allow_regression=p.allow_regression,
                         validation_size=p.validation_size, seed=p.seed)
    tuning = {"search": f"runs/{run_id}/tuning/search.json", "report": f"runs/{run_id}/tuning/report.html",
              "best_trial": best["trial_id"], "val_accuracy": best["val_accuracy"], "hyperparameters": hp,
              "algorithm": p.algorithm, "trials_completed": summary["trials_completed"]}
    return run_pipeline(params, tuning)


def build_parser() -> argparse.ArgumentParser:
    d = TuneParams()
    p = OneLineParser(description="Search hyperparameters, then train, gate and maybe promote the best candidate.",
                      epilog="Exit status: 0 promoted, 3 blocked by the gate, 2 bad parameters, 1 the run failed.")
    p.add_argument("--model", default=d.model, help="mlp or cnn")
    p.add_argument("--trials", type=int, default=d.trials)
    p.add_argument("--max-parallel", type=int, default=None,
                   help="trials in flight (default: one per Dask worker thread)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial (hyperband: at most)")
    p.add_argument("--algorithm", default=d.algorithm, help=", ".join(ALGORITHMS))
    p.add_argument("--min-accuracy", type=float, default=None)
    p.add_argument("--max-regression", type=float, default=d.max_regression)
    p.add_argument("--allow-regression", action="store_true")
    p.add_argument("--validation-size", type=int, default=d.validation_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-limit", type=int, default=None,
                   help="trials use the first N training images (tests, benchmarks)")
    return p


def main(argv: Optional[list] = None) -> int:
    return plumbing.main(tune_flow, build_parser(), lambda args: parse_params(TuneParams, **args).model_dump(), argv)


if __name__ == "__main__":
    sys.exit(main())
