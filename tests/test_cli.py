"""`mnist-pipeline` against moto S3 and the local store. Runs are written into the store with the
pipeline's own storage functions (a tiny real Keras model, metrics, predictions), so each test
takes a second instead of a training run; tests/test_train_flow.py covers runs made by the flow."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mnist_pipeline import registry
from mnist_pipeline.cli import app
from mnist_pipeline.models import model_to_bytes
from mnist_pipeline.stats import mcnemar_exact
from tasks.evaluate import Evaluation
from tasks.fetch import CACHE_PREFIX
from tasks.store_artifacts import store_manifest, store_run_files
from tests.conftest import assert_promotions_chain

CLI = str(Path(sys.executable).parent / "mnist-pipeline")


@pytest.fixture(scope="module")
def model_bytes():
    import keras

    return model_to_bytes(keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                            keras.layers.Dense(10, activation="softmax")]))


@pytest.fixture(scope="module")
def y_test(mnist_mirror):
    return np.frombuffer(gzip.decompress((mnist_mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                         np.uint8, offset=8)


@pytest.fixture
def make_run(mnist_mirror, model_bytes, y_test):
    """Store a finished run whose predictions are wrong on exactly the given test images."""
    def make(store, run_id, wrong: list[int] | np.ndarray, started_minutes_ago=0, model="mlp"):
        if not store.exists(CACHE_PREFIX + "t10k-labels-idx1-ubyte.gz"):
            store.put(CACHE_PREFIX + "t10k-labels-idx1-ubyte.gz",
                      (mnist_mirror / "t10k-labels-idx1-ubyte.gz").read_bytes())
        y_pred = y_test.copy()
        y_pred[wrong] = (y_pred[wrong] + 1) % 10
        acc = round(1 - len(wrong) / len(y_test), 6)
        metrics = {"test_accuracy": acc, "test_loss": 0.1, "test_errors": len(wrong)}
        store.put(f"runs/{run_id}/model.keras", model_bytes)
        store_run_files(store, run_id, Evaluation(metrics, y_pred, np.ones(len(y_pred), np.float32)),
                        {"curves.png": b"\x89PNG"}, f"<html>report of {run_id}</html>".encode())
        started = datetime.now(timezone.utc) - timedelta(minutes=started_minutes_ago)
        store_manifest(store, run_id, {"run_id": run_id, "started_at": started.isoformat(),
                                       "parameters": {"model": model, "epochs": 10},
                                       "gate": {"promoted": False, "reason": "stored"}})
        return acc
    return make


@pytest.fixture
def cli(store, monkeypatch):
    """Invoke the CLI in-process against the parametrised store (local folder or moto S3)."""
    if not store.url.startswith("s3://"):  # the s3 store's fixture has set the S3 environment
        monkeypatch.setenv("MNIST_STORE_URL", store.url)
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.97")

    def invoke(*args):
        return CliRunner().invoke(app, list(args))
    return invoke


def test_runs_lists_newest_first_and_marks_production(store, cli, make_run):
    make_run(store, "run-old", range(200), started_minutes_ago=30)
    make_run(store, "run-new", range(250), started_minutes_ago=1, model="cnn")
    assert cli("promote", "run-old").exit_code == 0
    result = cli("runs", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["run_id"] for r in rows] == ["run-new", "run-old"]
    assert [r["production"] for r in rows] == [False, True]
    assert rows[0]["model"] == "cnn" and rows[0]["test_accuracy"] == 0.975
    table = cli("runs").output
    assert table.index("run-new") < table.index("run-old") and "0.9800" in table


def test_empty_store_and_unknown_run_are_clear_errors(store, cli, make_run):
    result = cli("runs")
    assert result.exit_code == 1 and "no runs in" in result.output
    make_run(store, "abc123", [])
    result = cli("report", "zzz")
    assert result.exit_code == 1 and "run 'zzz' not found" in result.output
    assert "Traceback" not in result.output


def test_report_download_by_prefix(store, cli, make_run, tmp_path):
    make_run(store, "5f3e9a-run", [1, 2])
    target = tmp_path / "r.html"
    result = cli("report", "5f3e", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == b"<html>report of 5f3e9a-run</html>"


def test_report_url_is_presigned_and_works_over_http(s3_store, make_run, monkeypatch):
    make_run(s3_store, "run-url", [])
    result = CliRunner().invoke(app, ["report", "run-url", "--url", "--expires", "600"])
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[0]
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    assert urllib.request.urlopen(url, timeout=5).read() == b"<html>report of run-url</html>"


def test_compare_reports_mcnemar_on_the_stored_predictions(store, cli, make_run):
    make_run(store, "run-a", list(range(0, 100)))  # 100 errors
    make_run(store, "run-b", list(range(60, 200)))  # 140 errors; 40 shared
    result = cli("compare", "run-a", "run-b")
    assert result.exit_code == 0, result.output
    # right only by A: images 100-199 (100); right only by B: images 0-59 (60)
    n, k = 160, 60
    expected_p = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    assert "right only by run-a: 100; right only by run-b: 60" in result.output
    assert f"p = {expected_p:.4g}" in result.output and "significant at 0.05" in result.output


def test_mcnemar_exact_edge_cases():
    same = np.ones(10, bool)
    assert mcnemar_exact(same, same) == (0, 0, 1.0)
    b, c, p = mcnemar_exact(np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool))
    assert (b, c) == (2, 2) and p == 1.0


def test_promote_blocked_exits_3_and_keeps_production(store, cli, make_run):
    make_run(store, "good", range(150))
    make_run(store, "weak", range(400))  # 0.96
    assert cli("promote", "good", "--reason", "first model").exit_code == 0
    before = store.get(registry.PRODUCTION_KEY)
    result = cli("promote", "weak")
    assert result.exit_code == 3 and "promotion blocked: 0.960 < 0.970" in result.output
    assert store.get(registry.PRODUCTION_KEY) == before
    history = registry.read_history(store)
    assert [(r["run_id"], r["decision"]) for r in history] == [("good", "promoted"), ("weak", "blocked")]
    assert history[0]["note"] == "first model" and "@" in history[0]["actor"]
    shown = cli("history").output
    assert "first model" in shown and "blocked" in shown


def test_rollback_to_the_previous_production_model(store, cli, make_run):
    make_run(store, "v1", range(200))
    make_run(store, "v2", range(100))
    assert cli("promote", "v1").exit_code == 0
    assert cli("promote", "v2").exit_code == 0
    result = cli("rollback", "--reason", "v2 misbehaves in the field")
    assert result.exit_code == 0, result.output
    prod, _ = registry.read_production(store)
    assert prod["run_id"] == "v1" and prod["previous_run_id"] is None
    last = registry.read_history(store)[-1]
    assert last["decision"] == "rollback" and last["note"] == "v2 misbehaves in the field"
    again = cli("rollback")
    assert again.exit_code == 1 and "no earlier production model" in again.output


def _env_for(store, moto_server, base_env) -> dict:
    import os

    env = dict(os.environ, MNIST_MIN_ACCURACY="0.97")
    if store.url.startswith("s3://"):
        env.update(base_env)
    else:
        env["MNIST_STORE_URL"] = store.url
    return env


@pytest.fixture
def proc_env(request, store, moto_server):
    base = request.getfixturevalue("s3_env") if store.url.startswith("s3://") else {}
    return _env_for(store, moto_server, base)


def test_two_promotes_racing_leave_one_winner_and_a_truthful_history(store, make_run, proc_env):
    make_run(store, "racer-a", range(190))
    make_run(store, "racer-b", range(180))
    procs = [subprocess.Popen([CLI, "promote", run, "--reason", "race"], env=proc_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run in ("racer-a", "racer-b")]
    codes = [p.wait(120) for p in procs]
    assert all(code in (0, 3) for code in codes), [p.stderr.read() for p in procs]
    prod, _ = registry.read_production(store)
    history = registry.read_history(store)
    assert sorted(r["run_id"] for r in history) == ["racer-a", "racer-b"]
    promoted = [r for r in history if r["decision"] == "promoted"]
    assert_promotions_chain(promoted, prod["run_id"])
    assert {r["run_id"] for r in promoted} == {("racer-a", "racer-b")[i] for i, c in enumerate(codes) if c == 0}


def test_unreachable_endpoint_is_one_line_and_non_zero(s3_env, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    env = dict(__import__("os").environ)
    proc = subprocess.run([CLI, "runs"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: bucket") and "unreachable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "testing-secret" not in proc.stderr
