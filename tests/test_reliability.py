"""Faults injected for real on 127.0.0.1: the S3 endpoint cut while the flow runs, the flow's
process SIGKILLed mid-training and around the upload. Production must always name a complete
model that loads, and the run must recover through its retries (or a rerun)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mnist_pipeline import keys, registry
from mnist_pipeline.model import model_from_bytes
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tests.conftest import REPO, assert_promotions_chain, prefect_home, production_of
from tests.faults import CuttableProxy, FlowProcess

FLOW = [sys.executable, "flows/train_flow.py"]


@pytest.fixture
def faulty(moto_server, mnist_mirror, tmp_path, prefect_db):
    """Flow environment whose S3 endpoint goes through a cuttable proxy; a direct store for checks."""
    proxy = CuttableProxy(moto_server.port)
    proxy.restore()
    bucket = f"s3://faults-{uuid.uuid4().hex[:10]}"
    creds = dict(AWS_ACCESS_KEY_ID="fault-key", AWS_SECRET_ACCESS_KEY="fault-secret-9f2c",
                 AWS_DEFAULT_REGION="us-east-1")
    env = dict(os.environ, MNIST_STORE_URL=bucket, MNIST_MIRRORS=str(mnist_mirror),
               AWS_ENDPOINT_URL_S3=proxy.endpoint, PREFECT_HOME=prefect_home(tmp_path / "prefect", prefect_db),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **creds)
    env.pop("MNIST_MIN_ACCURACY", None)
    direct = open_store(load_settings(MNIST_STORE_URL=bucket, AWS_ENDPOINT_URL_S3=moto_server.endpoint,
                                      **creds))
    yield env, proxy, direct
    proxy.cut()


def assert_production_is_whole(store) -> dict | None:
    prod = production_of(store)
    if prod:
        data = store.get(prod["model_key"])
        assert hashlib.sha256(data).hexdigest() == prod["model_sha256"]
        model_from_bytes(data)  # loads, in safe mode
    return prod


def assert_run_is_whole(store, run_id: str) -> dict:
    """Every file the manifest lists is present and parses as what it is."""
    manifest = json.loads(store.get(f"runs/{run_id}/manifest.json"))
    print(f"FAULTS verified {len(manifest['files']) + 1} objects of run {run_id[:8]}")
    for key, record in manifest["files"].items():
        data = store.get(key)
        assert hashlib.sha256(data).hexdigest() == record["sha256"], key
        if key.endswith(".png"):
            assert data.startswith(b"\x89PNG")
        elif key.endswith(".json"):
            json.loads(data)
        elif key.endswith(".html"):
            assert data.rstrip().endswith(b"</html>")
        elif key.endswith(".keras"):
            model_from_bytes(data)
    return manifest


def test_storage_outage_at_start_and_during_upload_is_survived(faulty):
    env, proxy, store = faulty
    proxy.cut()  # the store is down when the run starts, longer than botocore's retries last
    flow = FlowProcess(FLOW + ["--epochs", "2", "--min-accuracy", "0.9"], REPO, env)
    flow.wait_for("Beginning flow run")
    time.sleep(9)
    proxy.restore()  # ... and comes back some seconds later
    flow.wait_for("Task run 'plots")
    proxy.cut()  # down again while the artifacts are uploaded
    time.sleep(4)
    proxy.restore()
    code = flow.wait()
    out = flow.output
    assert code == 0, out[-4000:]
    assert proxy.cuts == 2
    # each retry said so in the log, and the first outage outlasted them: the flow retried
    assert "S3 endpoint not answering" in out and "attempt 2/4" in out
    assert "Received non-final state 'AwaitingRetry'" in out
    assert "Traceback" not in out
    prod = assert_production_is_whole(store)
    assert_run_is_whole(store, prod["run_id"])
    print(f"FAULTS outage: endpoint cut {proxy.cuts} times; flow retries "
          f"{out.count('AwaitingRetry')}; request retries {out.count('S3 endpoint not answering')}; task attempts "
          f"failed {len(re.findall(r'Task run failed with exception: StoreUnavailable', out))}; run recovered")
    promoted = [r for r in registry.read_history(store) if r["decision"] == "promoted"]
    assert [r["run_id"] for r in promoted] == [prod["run_id"]]  # promoted exactly once
    assert env["AWS_SECRET_ACCESS_KEY"] not in out


@pytest.mark.slow  # the kill that matters, around the upload, is in the default suite (below)
def test_sigkill_during_training_leaves_production_alone_and_a_rerun_succeeds(faulty):
    env, _, store = faulty
    first = FlowProcess(FLOW + ["--epochs", "1", "--min-accuracy", "0.9"], REPO, env)
    assert first.wait() == 0, first.output[-3000:]
    before = store.get(keys.PRODUCTION)
    history_before = registry.read_history(store)

    victim = FlowProcess(FLOW + ["--epochs", "6", "--min-accuracy", "0.9"], REPO, env)
    victim.wait_for("epoch 2/6")
    victim.kill()
    print("FAULTS SIGKILL during training")
    assert store.get(keys.PRODUCTION) == before
    assert_production_is_whole(store)
    assert registry.read_history(store) == history_before
    killed_runs = {k.split("/")[1] for k in store.list("runs/")} - {json.loads(before)["run_id"]}
    for run_id in killed_runs:  # the killed run left no manifest: it is visibly incomplete
        assert not store.exists(f"runs/{run_id}/manifest.json")

    rerun = FlowProcess(FLOW + ["--epochs", "2", "--min-accuracy", "0.9"], REPO, env)
    assert rerun.wait() == 0, rerun.output[-3000:]
    prod = assert_production_is_whole(store)
    assert prod["run_id"] != json.loads(before)["run_id"]
    assert_run_is_whole(store, prod["run_id"])


def test_sigkill_around_the_upload_never_leaves_production_half_written(faulty):
    env, _, store = faulty
    victim = FlowProcess(FLOW + ["--epochs", "1", "--min-accuracy", "0.9"], REPO, env)
    victim.wait_for("Task run 'plots")
    victim.kill()
    print("FAULTS SIGKILL around the upload")
    # Whatever the kill interrupted, production is either absent or a complete, loadable model.
    assert_production_is_whole(store)
    rerun = FlowProcess(FLOW + ["--epochs", "1", "--min-accuracy", "0.9"], REPO, env)
    assert rerun.wait() == 0, rerun.output[-3000:]
    prod = assert_production_is_whole(store)
    assert_run_is_whole(store, prod["run_id"])


def test_two_flow_runs_and_a_manual_promote_racing(faulty):
    """Production always names one complete model, every decision is in the history, and every
    run's files are whole."""
    env, _, store = faulty
    stored = FlowProcess(FLOW + ["--epochs", "1", "--min-accuracy", "0.999"], REPO, env)
    assert stored.wait() == 3, stored.output[-3000:]  # a stored, blocked run to promote by hand
    candidate = registry.read_history(store)[-1]["run_id"]

    runs = [FlowProcess(FLOW + ["--epochs", "1", "--min-accuracy", "0.9", "--seed", str(seed)], REPO, env)
            for seed in (1, 2)]
    for run in runs:
        run.wait_for("Task run 'plots")
    cli_env = dict(env, MNIST_MIN_ACCURACY="0.9")
    manual = subprocess.Popen([str(Path(sys.executable).parent / "mnist-pipeline"), "promote", candidate,
                               "--allow-regression", "--reason", "race test"], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    codes = [run.wait() for run in runs] + [manual.wait(120)]
    assert all(code in (0, 3) for code in codes), [r.output[-2000:] for r in runs] + [manual.stderr.read()]

    prod = assert_production_is_whole(store)
    history = registry.read_history(store)
    flow_ids = [json.loads(store.get(k))["run_id"] for k in store.list("runs/") if k.endswith("manifest.json")]
    assert len(flow_ids) == 3
    for run_id in flow_ids:
        assert_run_is_whole(store, run_id)
    decided = [r["run_id"] for r in history]
    assert sorted(decided) == sorted([candidate] * 2 + [i for i in flow_ids if i != candidate])
    assert_promotions_chain([r for r in history if r["decision"] == "promoted"], prod["run_id"])
