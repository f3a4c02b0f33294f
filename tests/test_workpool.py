"""prefect.yaml for real: `prefect work-pool create` (process), `prefect deploy` from the
repository, `prefect worker start`, and a run created from the deployment that the worker
executes to completion (against the session's Prefect server, with its login, and moto S3)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from mnist_pipeline import registry
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tests.conftest import AUTH, REPO, wait_for
from tests.faults import stop_process_groups

POOL = "mnist-process"


def prefect(env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def worker_env(prefect_server, moto_server, mnist_mirror, tmp_path_factory):
    env = dict(os.environ, PREFECT_API_URL=prefect_server[0], PREFECT_API_AUTH_STRING=AUTH, PWD=str(REPO),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(tmp_path_factory.mktemp("worker-home")),
               PREFECT_WORKER_QUERY_SECONDS="2", MNIST_STORE_URL=f"s3://pool-{uuid.uuid4().hex[:10]}",
               MNIST_MIRRORS=str(mnist_mirror), AWS_ENDPOINT_URL_S3=moto_server.endpoint,
               AWS_ACCESS_KEY_ID="pool-key", AWS_SECRET_ACCESS_KEY="pool-secret-9a7c", AWS_DEFAULT_REGION="us-east-1")
    env.pop("MNIST_MIN_ACCURACY", None)
    return env


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    prefect(worker_env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    deployed = prefect(worker_env, "--no-prompt", "deploy", "--name", "training", "--prefect-file", "prefect.yaml")
    log_path = tmp_path_factory.mktemp("worker-log") / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                            cwd="/", env=worker_env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    yield deployed, log_path
    # `prefect worker start` (3.8.8) passes SIGTERM on to its worker process as SIGINT; once, in a
    # full local run, that process was still up 30 s later, polling the server. Its shutdown is not
    # what this test is about: after 10 s the process group is killed, so nothing outlives the test.
    stop_process_groups([proc], grace_s=10)


def test_a_run_of_the_deployed_flow_is_executed_by_the_worker(worker, worker_env, client):
    deployed, log_path = worker
    deployment = client.read_deployment_by_name("mnist-training/training")
    assert deployment.work_pool_name == POOL and [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
    run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 1, "min_accuracy": 0.9})

    def final():
        state = client.read_flow_run(run.id).state
        return state if state and state.is_final() else None
    try:
        state = wait_for(final, 300, "the worker's run", interval=2)
    except TimeoutError:
        pytest.fail("run not finished; worker log:\n" + log_path.read_text()[-4000:])
    assert state.name == "Promoted", f"{state.name}: {state.message}\n{log_path.read_text()[-3000:]}"
    store = open_store(load_settings(**{k: worker_env[k] for k in (
        "MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))
    assert registry.read_production(store)[0].run_id == str(run.id)
    assert store.exists(f"runs/{run.id}/report.html")
    assert worker_env["AWS_SECRET_ACCESS_KEY"] not in log_path.read_text()


def test_an_ingest_starts_a_run_of_the_deployment_that_the_worker_executes(worker, worker_env, client, tmp_path):
    """prefect.yaml's trigger on mnist.data.ingested: the run it creates trains on the new version."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from tests.digit_images import write_folder
    from tests.test_cli import CLI

    _, log_path = worker
    deployment = client.read_deployment_by_name("mnist-training/training")
    assert deployment.parameters == {"skip_unchanged": True}

    def runs():
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    before = {r.id for r in runs()}
    ingest = subprocess.run([CLI, "ingest", str(write_folder(tmp_path / "new", 5, seed=31))], env=worker_env,
                            capture_output=True, text=True, timeout=120)
    assert ingest.returncode == 0 and "event mnist.data.ingested sent" in ingest.stdout, ingest.stderr
    run = wait_for(lambda: [r for r in runs() if r.id not in before], 60, "a run started by the event")[0]

    def final():
        state = client.read_flow_run(run.id).state
        return state if state and state.is_final() else None
    state = wait_for(final, 300, "the triggered run", interval=2)
    assert state.name in ("Promoted", "Blocked"), f"{state.name}: {state.message}\n{log_path.read_text()[-3000:]}"
    store = open_store(load_settings(**{k: worker_env[k] for k in (
        "MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))
    assert [v["version"] for v in registry.read_manifest(store, str(run.id))[0]["data_versions"]] == [1]


def test_a_run_of_the_work_pool_deployment_waits_for_approval_and_is_promoted(worker, worker_env, client):
    """The same approval step as the served deployment's (tests/test_approval.py), in the worker's
    subprocess: paused, approved through the API as the UI does, Promoted."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    _, log_path = worker
    deployment = client.read_deployment_by_name("mnist-training/training")
    run = client.create_flow_run_from_deployment(deployment.id, parameters={
        "epochs": 1, "min_accuracy": 0.9, "require_approval": True, "allow_regression": True})

    def paused():
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"approve-{run.id}"])))
        return found[0] if found and found[0].state and found[0].state.is_paused() else None
    try:
        child = wait_for(paused, 300, "the approval step to pause", interval=2)
    except TimeoutError:
        pytest.fail("no paused approval step; worker log:\n" + log_path.read_text()[-4000:])
    client.resume_flow_run(child.id, run_input={"decision": "approve", "note": "from the pool", "approver": "carol"})
    state = wait_for(lambda: (s := client.read_flow_run(run.id).state) and s.is_final() and s, 120, "the run")
    assert state.name == "Promoted", f"{state.name}: {state.message}\n{log_path.read_text()[-3000:]}"
    store = open_store(load_settings(**{k: worker_env[k] for k in (
        "MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))
    assert registry.read_production(store)[0].run_id == str(run.id)
    approved = [r for r in registry.read_history(store) if r["run_id"] == str(run.id)]
    assert approved[0]["approval"]["by"] == "carol" and approved[0]["note"] == "from the pool"
