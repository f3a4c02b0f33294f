"""The served deployment against a real `prefect server start` on 127.0.0.1 (analytics off, a
login required as in compose) and moto S3, each test on both of Prefect's databases: SQLite, and
PostgreSQL 15 (a private cluster, `postgresql+asyncpg://`). The schedule fires and the run the
scheduler created completes; decided runs are named Promoted / Blocked; their events are in the
server's feed; a blocked run's notification reaches an HTTP receiver; the report link downloads."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from mnist_pipeline import registry
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tests.conftest import AUTH, PREFECT_POSTGRES_DATABASE, REPO, prefect_client, wait_for
from tests.test_publish import Receiver


def api_request(api: str, path: str, body: dict | None = None, auth: str | None = AUTH):
    request = urllib.request.Request(api + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request):
    """The Prefect server of the session on each database: (API URL, its log)."""
    return request.getfixturevalue({"sqlite": "prefect_server", "postgresql": "prefect_server_postgres"}[request.param])


@pytest.fixture(scope="module")
def client(server):
    with prefect_client(server[0]) as c:
        yield c


@pytest.fixture(scope="module")
def receiver(server):  # one per server: each one's notifications apart
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def served(server, moto_server, mnist_mirror, receiver, tmp_path_factory):
    api, _ = server
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=AUTH, PREFECT_RUNNER_POLL_FREQUENCY="2",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(tmp_path_factory.mktemp("serve-home")),
               MNIST_STORE_URL=f"s3://deploy-{uuid.uuid4().hex[:10]}", MNIST_MIRRORS=str(mnist_mirror),
               AWS_ENDPOINT_URL_S3=moto_server.endpoint, AWS_ACCESS_KEY_ID="deploy-key",
               AWS_SECRET_ACCESS_KEY="deploy-secret-5e1f", AWS_DEFAULT_REGION="us-east-1",
               # as a browser on the host reaches the endpoint (compose: http://localhost:9000)
               MNIST_S3_PUBLIC_URL=moto_server.endpoint.replace("127.0.0.1", "localhost"),
               MNIST_NOTIFY_URL=receiver.url, MNIST_KEEP_LAST="1")
    env.pop("MNIST_MIN_ACCURACY", None)
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    # every minute, so that the scheduler fires within the test; one epoch, so that it is quick
    proc = subprocess.Popen([sys.executable, "deployments/serve.py", "--cron", "* * * * *",
                             "--parameters", '{"epochs": 1, "min_accuracy": 0.9}'],
                            cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    yield env, log_path
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def deployment(served, client):
    def registered():
        try:
            return client.read_deployment_by_name("mnist-training/scheduled")
        except Exception:
            return None
    return wait_for(registered, 120, "deployment registration")


def finished(client, run_id, timeout: float, log_path):
    def final():
        state = client.read_flow_run(run_id).state
        return state if state and state.is_final() else None
    try:
        return wait_for(final, timeout, "the flow run", interval=2)
    except TimeoutError:
        pytest.fail("run did not finish; serve log:\n" + log_path.read_text()[-4000:])


def store_for(env):
    return open_store(load_settings(**{k: env[k] for k in (
        "MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}))


def test_the_api_and_ui_require_the_login(server):
    api, _ = server
    with pytest.raises(urllib.error.HTTPError) as refused:
        api_request(api, "/flows/filter", {}, auth=None)
    assert refused.value.code == 401
    assert isinstance(api_request(api, "/flows/filter", {}), list)


def server_errors(log: str) -> list[str]:
    """The server's log records that carry a traceback, except SQLite's "database is locked" in
    Prefect's own background services: a known Prefect-on-SQLite contention (PrefectHQ/prefect#18934)
    that the service retries on its next loop; anything else is a server error this pipeline caused."""
    records = re.split(r"(?m)^(?=\d\d:\d\d:\d\d\.\d+ \| )", log)
    return [r for r in records if "Traceback" in r and "database is locked" not in r]


def runs_of(client, deployment) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def test_the_schedule_fires_and_the_run_it_created_completes(deployment, client, served, server, request):
    """Not "the cron is registered": a run the scheduler created (auto-scheduled), executed to
    completion by the serving process, its report in S3. Then the schedule is paused."""
    env, log_path = served
    assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]

    def first_scheduled_run():  # the scheduler creates a few ahead: the earliest is the next to fire
        created = sorted((r for r in runs_of(client, deployment) if r.auto_scheduled),
                         key=lambda r: r.expected_start_time)
        return created[0] if created else None

    run = wait_for(first_scheduled_run, 90, "a run created by the scheduler", interval=2)
    state = finished(client, run.id, 240, log_path)
    client.pause_deployment(deployment.id)  # no more runs each minute for the other tests
    for later in runs_of(client, deployment):
        if later.state and later.state.is_scheduled():
            client.delete_flow_run(later.id)
    assert state.is_completed() and state.name == "Promoted", f"{state.name}: {state.message}"
    assert state.message.startswith("0.9") and ">= 0.9000" in state.message
    store = store_for(env)
    assert store.exists(f"runs/{run.id}/report.html")
    assert registry.read_production(store)[0].run_id == str(run.id)
    server_log = server[1].read_text()
    assert "Can't evaluate bulk DML" not in server_log, server_log[-3000:]
    errors = server_errors(server_log)
    assert not errors, errors[0][-3000:]
    if request.node.callspec.params["server"] == "postgresql":  # the run is PostgreSQL's row, not a file's
        postgres = request.getfixturevalue("postgres")
        row = f"SELECT state_name, auto_scheduled FROM flow_run WHERE id = '{run.id}'"
        assert postgres.sql(row, PREFECT_POSTGRES_DATABASE) == "Promoted|t"
        assert postgres.password not in server_log + log_path.read_text()


def create_example_automations(api: str, webhook: str) -> None:
    """deployments/automations.yaml as documented: a notification block, its id put in, created
    with Prefect's own command."""
    import yaml
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):  # the block on this server
        block_id = CustomWebhookNotificationBlock(name="mnist-test", url=webhook, method="POST",
                                                  json_data={"subject": "{{subject}}", "text": "{{body}}"}).save(
            "mnist-test", overwrite=True)
    text = (REPO / "deployments" / "automations.yaml").read_text()
    data = yaml.safe_load(text.replace("REPLACE-WITH-YOUR-NOTIFICATION-BLOCK-ID", str(block_id)))
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=AUTH)
    proc = subprocess.run([sys.executable, "-m", "prefect", "automation", "create", "--from-json", json.dumps(data)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Created 2 automation" in proc.stdout.replace("\n", " "), proc.stdout + proc.stderr


# On PostgreSQL in `make test-all`: the schedule's and the failed run's tests run on both databases.
@pytest.mark.parametrize("server", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True)
def test_a_blocked_run_is_named_evented_and_notified(deployment, client, served, receiver, server):
    """Runs created through the API, as the UI does; also the example automation "blocked twice
    running", sent through a webhook block."""
    env, log_path = served
    create_example_automations(server[0], f"http://127.0.0.1:{receiver.server.server_address[1]}/")
    first = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 1, "min_accuracy": 0.998})
    run = client.create_flow_run_from_deployment(deployment.id, parameters={"epochs": 1, "min_accuracy": 0.999})
    assert finished(client, first.id, 300, log_path).name == "Blocked"
    state = finished(client, run.id, 300, log_path)
    assert state.is_completed() and state.name == "Blocked"
    assert state.message.startswith("promotion blocked: 0.9") and state.message.endswith("< 0.9990")
    notes = wait_for(lambda: [m for m in receiver.received if str(run.id)[:8] in m.get("title", "")], 30,
                     "the notification")
    assert notes[0]["title"] == f"mnist-pipeline: run {str(run.id)[:8]} blocked"
    assert "< threshold 0.9990" in notes[0]["message"] and "Report: http://localhost:" in notes[0]["message"]
    assert env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(receiver.received)

    def events():  # this run's blocked event, and a promotion's, both in the feed
        found = api_request(server[0], "/events/filter",
                            {"filter": {"event": {"prefix": ["mnist."]}}, "limit": 50})["events"]
        mine = [e for e in found if e["event"] == "mnist.promotion.blocked"
                and e["resource"]["prefect.resource.id"] == f"mnist.run.{run.id}"]
        return (mine[0], found) if mine and any(e["event"] == "mnist.model.promoted" for e in found) else None

    blocked, found = wait_for(events, 30, "the events in the server's feed")
    assert blocked["resource"]["prefect.resource.id"] == f"mnist.run.{run.id}"
    assert blocked["payload"]["min_accuracy"] == 0.999 and blocked["payload"]["test_accuracy"] < 0.999
    promoted = next(e for e in found if e["event"] == "mnist.model.promoted")
    assert blocked["payload"]["production_run_id"] == promoted["payload"]["run_id"]
    automation = wait_for(lambda: [m for m in receiver.received if m.get("subject") == "mnist: promotion blocked "
                                   "twice running"], 60, "the automation's notification")
    assert automation[0]["text"].startswith("Last: run ")


def test_the_report_link_artifact_downloads_the_report(deployment, client, served):
    env, _ = served
    store = store_for(env)
    production = registry.read_production(store)[0]
    links = [a for a in client.read_artifacts() if a.key == "mnist-report" and str(a.flow_run_id) == production.run_id]
    assert links and links[0].description.startswith(f"{production.test_accuracy:.4f} · promoted")
    url, dashboard = re.findall(r"\]\((http[^)]+)\)", links[0].data)  # markdown: [text](url), twice
    assert url.startswith(env["MNIST_S3_PUBLIC_URL"] + "/")
    assert urllib.request.urlopen(url, timeout=10).read() == store.get(f"runs/{production.run_id}/report.html")
    page = urllib.request.urlopen(dashboard, timeout=10).read().decode()  # the dashboard, as the last run left it
    assert "every run on one page" in page and f'title="report of {production.run_id}"' in page
    artifacts = [a for a in client.read_artifacts() if str(a.flow_run_id) == production.run_id]
    assert {"mnist-run-summary", "mnist-per-class-metrics", "mnist-report"} <= {a.key for a in artifacts}
    progress = [a.data for a in artifacts if a.key == "mnist-training-progress"]
    assert progress == [100]  # the training's progress bar, set between epochs, ended full
    assert all(env["AWS_SECRET_ACCESS_KEY"] not in str(a.data) + str(a.description) for a in artifacts)


def test_deployment_has_its_limit_tags_and_parameter_form(deployment):
    assert set(deployment.tags) >= {"mnist", "training"}
    assert deployment.global_concurrency_limit and deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters == {"skip_unchanged": True, "epochs": 1, "min_accuracy": 0.9}
    props = deployment.parameter_openapi_schema["properties"]
    assert set(props) >= {"epochs", "batch_size", "model", "min_accuracy", "max_regression", "allow_regression"}
    assert "Empty: the model's default" in props["epochs"]["description"]
    assert deployment.enforce_parameter_schema


def test_bad_parameters_are_refused_before_any_run(deployment, client):
    for bad in ({"epochs": 0}, {"min_accuracy": 1.5}, {"model": "resnet"}, {"batch_size": 0}):
        with pytest.raises(Exception) as err:
            client.create_flow_run_from_deployment(deployment.id, parameters=bad)
        assert "422" in str(err.value) or "409" in str(err.value) or "validation" in str(err.value).lower()


def test_retention_ran_after_each_run_and_no_secret_is_in_the_serving_log(served, deployment, client):
    env, log_path = served
    decided = [r for r in runs_of(client, deployment)
               if r.state and r.state.name in ("Promoted", "Blocked")]  # each ends in retention
    line = "retention: kept the newest 1 runs, production and its rollback stack"
    assert decided  # the serving process copies a run's output into its log as it comes: wait for the last
    wait_for(lambda: log_path.read_text().count(line) >= len(decided), 30, "a retention line for each decided run")
    log = log_path.read_text()
    assert env["AWS_SECRET_ACCESS_KEY"] not in log and AUTH not in log


def test_a_failed_run_is_evented_and_notified(server, moto_server, receiver, tmp_path):
    """`mnist.run.failed` in the server's feed and the alert received, from a run that failed for
    real (a mirror without the files, an empty store), with the reason and without the secret."""
    api, _ = server
    (tmp_path / "empty-mirror").mkdir()
    secret = "failed-run-secret-7c2a"
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=AUTH, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               MNIST_STORE_URL=f"s3://failed-{uuid.uuid4().hex[:10]}", MNIST_MIRRORS=str(tmp_path / "empty-mirror"),
               AWS_ENDPOINT_URL_S3=moto_server.endpoint, AWS_ACCESS_KEY_ID="failed-key",
               AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1", MNIST_NOTIFY_URL=receiver.url)
    proc = subprocess.run([sys.executable, "flows/train_flow.py", "--epochs", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "is on none of the mirrors" in proc.stderr, proc.stderr[-2000:]

    def failed_event():
        found = api_request(api, "/events/filter", {"filter": {"event": {"name": ["mnist.run.failed"]}}, "limit": 50})
        return [e for e in found["events"] if "is on none of the mirrors" in e["payload"].get("reason", "")]

    event = wait_for(failed_event, 30, "the failed event in the server's feed")[0]
    run_id = event["payload"]["run_id"]
    assert event["resource"]["prefect.resource.id"] == f"mnist.run.{run_id}"
    assert event["payload"]["flow"] == "mnist-training" and event["payload"]["store"] == env["MNIST_STORE_URL"]
    assert {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"} in event["related"]
    note = wait_for(lambda: [m for m in receiver.received if m.get("title") == f"mnist-pipeline: run {run_id[:8]} failed"],
                    30, "the failure's notification")[0]
    assert "FAILED" in note["message"] and "is on none of the mirrors" in note["message"]
    assert secret not in json.dumps(event) + json.dumps(receiver.received) + proc.stdout + proc.stderr
