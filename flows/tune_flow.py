"""Hyperparameter search, then the training pipeline for its best candidate:
preflight -> fetch (the workers read the store's verified cache) -> search (Keras Tuner's oracle,
each trial a Prefect task on Dask, scored on the validation split) -> the pipeline of
flows/train_flow.py with the best trial's hyperparameters: train, evaluate (the test set, once),
plots, gate, report, store, promote.

`python flows/tune_flow.py --help`. Exit statuses as train_flow.py (flows/plumbing.py); a search in
which every trial failed is a one-line error, exit 1.
"""
# ruff: noqa: E402  (run as a program, it starts Prefect's server before importing Prefect)

if __name__ == "__main__":
    from mnist_pipeline.startup import fast_start

    fast_start()

import sys

from prefect import flow, get_run_logger

from flows import plumbing
from flows.train_flow import run_pipeline
from mnist_pipeline import keys
from mnist_pipeline.params import GATE_PARAMETERS, TrainParams, TuneParams, flow_parameters
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tasks.fetch import fetch_task
from tasks.gate import preflight_task
from tasks.search import run_search
from tasks.trial import DataSource, trial_epochs


# No flow retries: a retry would run the whole search again; trials that fail are recorded and
# skipped, and the candidate's pipeline fails or decides like any run.
@flow(name="mnist-tuning", retries=0, validate_parameters=True, on_failure=[plumbing.on_run_failed],
      description="Hyperparameter search with Keras Tuner, trials as tasks on Dask; the best "
                  "candidate then goes through the training pipeline's evaluation and gate.")
@flow_parameters(TuneParams, "Search hyperparameters, then train, gate and maybe promote the best candidate.")
def tune_flow(**parameters):
    plumbing.prepare_run()
    p = TuneParams(**parameters)
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
    gate_params = p.model_dump(include=set(GATE_PARAMETERS))
    params = TrainParams(**gate_params, epochs=trial_epochs(hp, p.epochs), batch_size=int(hp["batch_size"]),
                         learning_rate=float(hp["learning_rate"]))
    tuning = {"search": keys.tuning_search(run_id), "report": keys.tuning_report(run_id),
              "best_trial": best["trial_id"], "val_accuracy": best["val_accuracy"], "hyperparameters": hp,
              "algorithm": p.algorithm, "trials_completed": summary["trials_completed"]}
    with plumbing.retried_only_if_transient():  # no retries here: it redacts what nobody foresaw
        return run_pipeline(params, tuning)


def main(argv: list[str] | None = None) -> int:
    return plumbing.main(tune_flow, TuneParams, argv)


if __name__ == "__main__":
    sys.exit(main())
