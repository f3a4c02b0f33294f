"""The deployment against a real `prefect server start` on 127.0.0.1 (SQLite, analytics off) and
moto S3: registered with its cron schedule and parameter schema, a run created through the API
as the UI's Run button does, executed by the serving process, its report and model in S3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from mnist_pipeline import registry
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout} s")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-server-home")
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL="")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return urllib.request.urlopen(api + "/health", timeout=2).status == 200
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            return False

    wait_for(healthy, 120, "prefect server health")
    yield api
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def served(prefect_server, moto_server, mnist_mirror, tmp_path_factory):
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_HOME=str(tmp_path_factory.mktemp("serve-home")),
               MNIST_STORE_URL=f"s3://deploy-{uuid.uuid4().hex[:10]}", MNIST_MIRRORS=str(mnist_mirror),
               AWS_ENDPOINT_URL_S3=moto_server.endpoint, AWS_ACCESS_KEY_ID="deploy-key",
               AWS_SECRET_ACCESS_KEY="deploy-secret", AWS_DEFAULT_REGION="us-east-1")
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "deployments/serve.py", "--cron", "30 3 * * *"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield env, log_path
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def client(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as c:
            yield c


@pytest.fixture(scope="module")
def deployment(served, client):
    def registered():
        try:
            return client.read_deployment_by_name("mnist-training/scheduled")
        except Exception:
            return None
    return wait_for(registered, 120, "deployment registration")


def test_deployment_has_its_schedule_limit_tags_and_parameter_form(deployment):
    assert [s.schedule.cron for s in deployment.schedules] == ["30 3 * * *"]
    assert all(s.active for s in deployment.schedules)
    assert set(deployment.tags) >= {"mnist", "training"}
    assert deployment.global_concurrency_limit and deployment.global_concurrency_limit.limit == 1
    props = deployment.parameter_openapi_schema["properties"]
    assert set(props) >= {"epochs", "batch_size", "model", "min_accuracy", "max_regression", "allow_regression"}
    assert props["epochs"]["default"] == 10 and props["epochs"]["minimum"] == 1
    assert "Passes over the training set" in props["epochs"]["description"]
    assert props["model"]["enum"] == ["mlp", "cnn"] or "mlp" in str(props["model"])
    assert deployment.enforce_parameter_schema


def test_bad_parameters_are_refused_before_any_run(deployment, client):
    for bad in ({"epochs": 0}, {"min_accuracy": 1.5}, {"model": "resnet"}, {"batch_size": 0}):
        with pytest.raises(Exception) as err:
            client.create_flow_run_from_deployment(deployment.id, parameters=bad)
        assert "422" in str(err.value) or "409" in str(err.value) or "validation" in str(err.value).lower()


def test_a_run_started_like_the_ui_run_button_completes_and_stores_its_report(deployment, client, served):
    env, log_path = served
    run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 2, "min_accuracy": 0.9})

    def finished():
        state = client.read_flow_run(run.id).state
        return state if state and state.is_final() else None

    try:
        state = wait_for(finished, 420, "the flow run", interval=2)
    except TimeoutError:
        pytest.fail("run did not finish; serve log:\n" + log_path.read_text()[-4000:])
    assert state.is_completed(), f"{state.name}: {state.message}\n{log_path.read_text()[-4000:]}"
    store = open_store(load_settings(**{k: env[k] for k in (
        "MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))
    run_id = str(run.id)
    assert store.exists(f"runs/{run_id}/report.html") and store.exists(f"runs/{run_id}/model.keras")
    assert registry.read_production(store)[0]["run_id"] == run_id
    artifacts = [a for a in client.read_artifacts() if a.flow_run_id == run.id]
    assert {"mnist-run-summary", "mnist-per-class-metrics", "mnist-report"} <= {a.key for a in artifacts}
    # no secret in any artifact the UI shows, nor in the serving process's log
    secret = env["AWS_SECRET_ACCESS_KEY"]
    assert all(secret not in str(a.data) + str(a.description) for a in artifacts)
    assert secret not in log_path.read_text()
