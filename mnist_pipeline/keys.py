"""The store's key layout, in one place: every key the pipeline reads or writes is made here.

The same keys under the store URL for S3 and a folder (docs/pipeline.md):

    datasets/mnist/<file name>.gz                  verified raw IDX cache
    datasets/ingested/versions/<NNNNNN>.json       an ingested dataset version's manifest (its presence = the version)
    datasets/ingested/images/<sha256>.npy          its prepared images, named by their SHA-256
    runs/<run_id>/model.keras, history.json, metrics.json, predictions.npy, report.html,
                 plots/<name>.png, manifest.json, collected.json, tuning/...
    registry/production.json                       the model in production and its rollback stack
    registry/history/<UTC time>-<run_id>.json      one record per decision
    index.html                                     the dashboard: every run on one page
"""

from __future__ import annotations

import re

RUNS = "runs/"
MNIST_CACHE = "datasets/mnist/"
REGISTRY = "registry/"
PRODUCTION = "registry/production.json"
HISTORY = "registry/history/"
DASHBOARD = "index.html"
INGESTED = "datasets/ingested/"
DATA_VERSIONS, DATA_IMAGES = INGESTED + "versions/", INGESTED + "images/"
TOP_LEVEL = (RUNS, REGISTRY, MNIST_CACHE, INGESTED, DASHBOARD)  # anything else in a store is foreign

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # Prefect's are UUIDs

# A run's files, by name under runs/<run_id>/
MODEL, TRAINING_HISTORY, METRICS, PREDICTIONS = "model.keras", "history.json", "metrics.json", "predictions.npy"
REPORT, MANIFEST, COLLECTED = "report.html", "manifest.json", "collected.json"
PLOTS, TUNING = "plots/", "tuning/"


def run_prefix(run_id: str) -> str:
    return f"{RUNS}{run_id}/"


def run_file(run_id: str, name: str) -> str:
    return run_prefix(run_id) + name


def model(run_id: str) -> str:
    return run_file(run_id, MODEL)


def training_history(run_id: str) -> str:
    return run_file(run_id, TRAINING_HISTORY)


def metrics(run_id: str) -> str:
    return run_file(run_id, METRICS)


def predictions(run_id: str) -> str:
    return run_file(run_id, PREDICTIONS)


def report(run_id: str) -> str:
    return run_file(run_id, REPORT)


def manifest(run_id: str) -> str:
    return run_file(run_id, MANIFEST)


def collected(run_id: str) -> str:
    return run_file(run_id, COLLECTED)


def plot(run_id: str, name: str) -> str:
    return run_file(run_id, PLOTS + name)


def tuning_trial(run_id: str, trial_id: str) -> str:
    return run_file(run_id, f"{TUNING}trials/{trial_id}.json")


def tuning_search(run_id: str) -> str:
    return run_file(run_id, f"{TUNING}search.json")


def tuning_report(run_id: str) -> str:
    return run_file(run_id, f"{TUNING}report.html")


def run_of(key: str) -> str | None:
    """The run id of a key under runs/<run_id>/, else None."""
    if not key.startswith(RUNS):
        return None
    run_id, slash, _ = key[len(RUNS):].partition("/")
    return run_id if slash and RUN_ID.match(run_id) else None


def mnist_file(name: str) -> str:
    return f"{MNIST_CACHE}{name}.gz"


HISTORY_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # sorts in time order: review commands rely on it


def history_record(stamp: str, run_id: str) -> str:
    """registry/history/<stamp>-<run_id>.json, stamp in HISTORY_TIME_FORMAT."""
    return f"{HISTORY}{stamp}-{run_id}.json"


_DATA_VERSION = re.compile(r"^(\d{6})\.json$")
_DATA_IMAGES = re.compile(r"^[0-9a-f]{64}\.npy$")


def data_version(version: int) -> str:
    """datasets/ingested/versions/000001.json: zero-padded, so the keys sort in version order."""
    return f"{DATA_VERSIONS}{version:06d}.json"


def data_version_of(key: str) -> int | None:
    """The version number of a version manifest's key, else None."""
    match = _DATA_VERSION.match(key[len(DATA_VERSIONS):]) if key.startswith(DATA_VERSIONS) else None
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def data_images(sha256: str) -> str:
    """Content-addressed: no other ingest can write different bytes under this key."""
    return f"{DATA_IMAGES}{sha256}.npy"


def is_data_images(key: str) -> bool:
    return key.startswith(DATA_IMAGES) and bool(_DATA_IMAGES.match(key[len(DATA_IMAGES):]))
