"""A run on ingested data, end to end (`python flows/train_flow.py` on the real MNIST files, moto
S3, its own Prefect server): digits that are not MNIST's are ingested; the next run trains on
MNIST plus the version's training part, records the version, and shows new-data accuracy for
production's model before and for itself; the new-data gate blocks when asked; a run whose
inputs are production's run's ends at once as Unchanged, storing nothing."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from mnist_pipeline import data_versions, keys, registry
from mnist_pipeline.cli import main
from tests.digit_images import write_folder
from tests.fakes import cache_test_set, model_zoo, store_run
from tests.test_cli import CLI
from tests.test_report import body_text
from tests.test_train_flow import flow_env, run_flow, store_for  # noqa: F401 (flow_env: a fixture)

SHORT = ("--epochs", "1", "--min-accuracy", "0.9")


@pytest.fixture(scope="module")
def story(flow_env, mnist_mirror, tmp_path_factory):
    """Production: a small linear model (no training); then 30 rendered images of each digit
    ingested as version 1 (24 to train on, 6 held out, per digit)."""
    store = store_for(flow_env)
    cache_test_set(store, mnist_mirror)
    store_run(store, "zoo-production", model_zoo(mnist_mirror, noise_levels=(0.0,))[0], decide=None)
    registry.promote(store, registry.stored_candidate(store, "zoo-production"), min_accuracy=0.5)
    folder = write_folder(tmp_path_factory.mktemp("rendered"), 30, seed=11)
    with pytest.MonkeyPatch.context() as env:
        for name in ("MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setenv(name, flow_env[name])
        env.delenv("PREFECT_API_URL", raising=False)
        assert main(["ingest", str(folder), "--note", "rendered fonts"]) == 0
    (version,) = data_versions.list_versions(store)
    return store, version


def newest_run(store) -> str:
    return registry.read_history(store)[-1]["run_id"]


def test_the_next_run_learns_from_the_version_and_is_judged_on_its_holdout(story, flow_env):
    store, version = story
    started = time.monotonic()
    proc = run_flow(flow_env, *SHORT, "--min-new-data-accuracy", "0.999")
    print(f"\nDATA first run on version 1: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 3, proc.stderr[-3000:]
    run_id = newest_run(store)
    assert re.search(r"promotion blocked: new-data accuracy 0\.\d{4} < 0\.9990", proc.stdout)
    manifest = json.loads(store.get(keys.manifest(run_id)))
    assert manifest["data_versions"] == [{"version": 1, "sha256": version.images.sha256, "train": 240, "holdout": 60}]
    assert manifest["data_profile"]["train_samples"] == 60000 + 240 == 60000 + version.train_images
    assert manifest["changes_since_production"][0] == "data: version 1 added (240 training images)"
    new_data = json.loads(store.get(keys.metrics(run_id)))["new_data"]
    assert new_data["images"] == 60 and new_data["versions"] == [1]
    before = new_data["production_before"]
    assert before["run_id"] == "zoo-production" and 0 < before["accuracy"] < 1 and 0 < new_data["accuracy"] < 0.999
    text = body_text(store.get(keys.report(run_id)).decode())
    assert f"this run {new_data['accuracy']:.4f}" in text and f"{before['accuracy']:.4f}" in text
    assert "New data" in text and "rendered fonts" in text
    listing = subprocess.run([CLI, "runs"], env=flow_env, capture_output=True, text=True, timeout=60)
    row = next(line.split("\t") for line in listing.stdout.splitlines() if line.startswith(run_id))
    assert row[5:] == ["blocked", "", f"{new_data['accuracy']:.4f} ({before['accuracy']:.4f})"]


def test_an_unchanged_run_ends_at_once_storing_nothing_and_a_missing_version_is_one_line(story, flow_env):
    store, _ = story
    trained = run_flow(flow_env, *SHORT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    production = registry.read_production(store)[0].run_id
    blocked = [r["run_id"] for r in registry.read_history(store) if r["decision"] == "blocked"][-1]
    compared = subprocess.run([CLI, "compare", blocked, production], env=flow_env, capture_output=True, text=True,
                              timeout=120)
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in compared.stdout.splitlines()}
    (a, b) = (json.loads(store.get(keys.metrics(r)))["new_data"]["accuracy"] for r in (blocked, production))
    assert rows["data versions"] == ["1", "1", ""]
    assert rows["new-data accuracy"] == [f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
    assert rows["new-data holdout images"] == ["60", "60", ""]
    runs, history = store.list_children(keys.RUNS), registry.history_keys(store)
    unchanged = run_flow(flow_env, *SHORT, "--skip-unchanged")
    assert unchanged.returncode == 0, unchanged.stderr[-3000:]
    line = [out for out in unchanged.stdout.splitlines() if out.startswith("run ")][-1]
    assert line.endswith(f": unchanged: the dataset versions, code and parameters are those of production's run "
                         f"{production}; nothing was trained or stored")
    assert "Finished in state Unchanged(" in unchanged.stdout + unchanged.stderr
    assert "Task run 'fetch" not in unchanged.stdout + unchanged.stderr
    assert store.list_children(keys.RUNS) == runs and registry.history_keys(store) == history
    listing = subprocess.run([CLI, "data"], env=flow_env, capture_output=True, text=True, timeout=60)
    assert listing.stdout.splitlines()[1].split("\t")[-1] == "*"  # production was trained on it
    missing = run_flow(flow_env, *SHORT, "--data-version", "2", "--skip-unchanged")
    errors = [out for out in missing.stderr.splitlines() if out.startswith("error:")]
    assert missing.returncode == 1 and errors == [
        f"error: run failed: data_version 2: the store {store.url} has version 1; `mnist-pipeline data` lists them"]


def test_verify_names_a_version_production_was_trained_on_that_is_gone(story, flow_env):
    """Versions are never deleted by the pipeline; one deleted by hand is a problem `verify` names."""
    store, version = story
    clean = subprocess.run([CLI, "verify"], env=flow_env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "1 dataset versions" in clean.stdout, clean.stdout + clean.stderr
    production = registry.read_production(store)[0].run_id
    store.delete(keys.data_version(1))
    audit = subprocess.run([CLI, "verify"], env=flow_env, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 1 and audit.stdout.splitlines() == [
        f"data version 1, which run {production} (production or its rollback stack) was trained on, is missing"]
