"""Approval before promotion (`require_approval`, tasks/approval.py) on a real `prefect server start`
(SQLite) with the served deployment (deployments/serve.py) and moto S3. A run that passed the gate
waits in its child run `approve-<run id>`, Paused with the typed form, after a notification with
the link to it; it is answered through Prefect's API as the UI answers it (POST
/flow_runs/{id}/resume with run_input). Approved: Promoted, the note and the approver in the
history record and the report. Rejected, or not answered in time: Blocked with that reason.

The serving process renews its deployment's concurrency lease every 3 s instead of every 225 s (a
sitecustomize sets Prefect's renewal fraction), so that a wait of seconds outlasts renewals as a
wait of hours does: the run keeps its lease while its child waits (a run that paused itself would
be Crashed by the first renewal: tasks/approval.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from mnist_pipeline import keys, registry
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store
from tests.browser import chromium_page, screenshot
from tests.conftest import AUTH, REPO, wait_for
from tests.test_publish import Receiver

FAST_LEASE_RENEWAL = "import prefect.concurrency._leases as leases\nleases._RENEWAL_FRACTION = 0.01  # every 3 s\n"
DEPLOYMENT = "mnist-training/approval"


@pytest.fixture(scope="module")
def served(prefect_server, moto_server, mnist_mirror, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(FAST_LEASE_RENEWAL)
    receiver = Receiver()
    env = dict(os.environ, PREFECT_API_URL=prefect_server[0], PREFECT_API_AUTH_STRING=AUTH,
               PREFECT_RUNNER_POLL_FREQUENCY="2", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_HOME=str(tmp_path_factory.mktemp("serve-home")), PYTHONPATH=str(site),
               MNIST_STORE_URL=f"s3://approve-{uuid.uuid4().hex[:10]}", MNIST_MIRRORS=str(mnist_mirror),
               AWS_ENDPOINT_URL_S3=moto_server.endpoint, AWS_ACCESS_KEY_ID="approve-key",
               AWS_SECRET_ACCESS_KEY="approve-secret-41d9", AWS_DEFAULT_REGION="us-east-1",
               MNIST_S3_PUBLIC_URL=moto_server.endpoint.replace("127.0.0.1", "localhost"),
               MNIST_NOTIFY_URL=receiver.url)
    env.pop("MNIST_MIN_ACCURACY", None)
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc = subprocess.Popen([sys.executable, "deployments/serve.py", "--name", "approval", "--parameters",
                             '{"epochs": 1, "min_accuracy": 0.9, "require_approval": true}'],
                            cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    names = ("MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MNIST_S3_PUBLIC_URL")
    store = open_store(load_settings(**{k: env[k] for k in names}))
    try:
        yield SimpleNamespace(env=env, log=log, receiver=receiver, store=store)
    finally:
        proc.terminate()
        proc.wait(30)
        receiver.close()


@pytest.fixture(scope="module")
def deployment(served, client):
    def registered():
        try:
            return client.read_deployment_by_name(DEPLOYMENT)
        except Exception:
            return None
    return wait_for(registered, 120, "deployment registration")


def start(client, deployment, **parameters):
    return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def waiting_child(client, run, served, timeout: float = 300):
    """The run's approval step, once it is Paused."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    def paused():
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"approve-{run.id}"])))
        return found[0] if found and found[0].state and found[0].state.is_paused() else None
    try:
        return wait_for(paused, timeout, "the approval step to pause", interval=1)
    except TimeoutError:
        pytest.fail("no paused approval step; serve log:\n" + served.log.read_text()[-4000:])


def finished(client, run_id, served, timeout: float = 120):
    def final():
        state = client.read_flow_run(run_id).state
        return state if state and state.is_final() else None
    try:
        return wait_for(final, timeout, "the flow run", interval=1)
    except TimeoutError:
        pytest.fail("run did not finish; serve log:\n" + served.log.read_text()[-4000:])


def flow_record(store, run_id) -> dict:
    records = [r for r in registry.read_history(store) if r["run_id"] == run_id and r["source"] == "flow"]
    assert len(records) == 1, records
    return records[0]


def test_a_run_that_passed_waits_paused_notifies_and_an_approval_promotes_it(served, deployment, client):
    from prefect.client.schemas.responses import SetStateStatus

    run = start(client, deployment, epochs=1, min_accuracy=0.9, require_approval=True, approval_timeout=900)
    child = waiting_child(client, run, served)
    assert client.read_flow_run(run.id).state.is_running()  # the run keeps its slot; its approval step waits
    note = wait_for(lambda: [m for m in served.receiver.received if str(run.id)[:8] in m.get("title", "")], 30,
                    "the notification")[0]
    assert note["title"] == f"mnist-pipeline: run {str(run.id)[:8]} waiting for approval"
    assert f"/runs/flow-run/{child.id}" in note["message"] and "Approve or reject it by " in note["message"]
    store = served.store
    assert registry.read_production(store)[0] is None  # nothing is promoted while it waits
    assert "waiting for a person" in store.get(keys.report(str(run.id))).decode()
    refused = client.resume_flow_run(child.id, run_input={"decision": "maybe", "approver": "alice"})
    assert refused.status == SetStateStatus.REJECT and client.read_flow_run(child.id).state.is_paused()
    answered = client.resume_flow_run(child.id, run_input={"decision": "approve", "note": "sevens look fine",
                                                           "approver": "alice"})
    assert answered.status == SetStateStatus.ACCEPT
    state = finished(client, run.id, served)
    assert state.is_completed() and state.name == "Promoted", f"{state.name}: {state.message}"
    assert client.read_flow_run(child.id).state.name == "Approved"
    assert registry.read_production(store)[0].run_id == str(run.id)
    record = flow_record(store, str(run.id))
    assert record["decision"] == "promoted" and record["note"] == "sevens look fine"
    assert record["approval"]["approved"] is True and record["approval"]["by"] == "alice"
    report = store.get(keys.report(str(run.id))).decode()
    assert "Promoted to production" in report and "approved by alice: sevens look fine" in report
    assert json.loads(store.get(keys.manifest(str(run.id))))["gate"]["promoted"] is True
    with chromium_page() as page:  # the dashboard the run refreshed, and its real report, in a browser
        page.goto(store.link(keys.DASHBOARD))
        assert "approved by alice" in page.locator("table.decisions tr.current").inner_text()
        screenshot(page, "approval-dashboard")
        page.locator("table.decisions tr.current a").click()
        page.wait_for_load_state()
        assert page.locator(".verdict .headline").inner_text().endswith("Promoted to production")
        assert "Approval: approved by alice: sevens look fine" in page.locator(".checks").inner_text()
        screenshot(page, "approval-report")
    assert served.env["AWS_SECRET_ACCESS_KEY"] not in served.log.read_text() + json.dumps(served.receiver.received)


def test_a_rejection_blocks_it_with_who_and_why(served, deployment, client, prefect_server):
    """The note, which quotes a link with its password, is kept redacted, and the form as typed is
    deleted from Prefect's database (it stayed there)."""
    store = served.store
    before = registry.read_production(store)[0]
    run = start(client, deployment, epochs=1, min_accuracy=0.9, require_approval=True, approval_timeout=900,
                allow_regression=True)
    child = waiting_child(client, run, served)
    client.resume_flow_run(child.id, run_input={
        "decision": "reject", "note": "not on a Friday, see https://bob:Fr1day-Pa55@wiki.example/x", "approver": "bob"})
    state = finished(client, run.id, served)
    assert state.is_completed() and state.name == "Blocked"
    assert state.message == "promotion blocked: rejected by bob: not on a Friday, see https://***@wiki.example/x"
    db = sqlite3.connect(prefect_server[1].parent / "prefect.db")  # the server's home holds its log
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert "rejected by bob" in dump and "Fr1day-Pa55" not in dump  # states, inputs, logs, events
    assert "Fr1day-Pa55" not in served.log.read_text()
    assert client.read_flow_run(child.id).state.name == "Rejected"
    assert registry.read_production(store)[0] == before  # production unchanged
    record = flow_record(store, str(run.id))
    assert record["decision"] == "blocked" and record["reason"] == state.message
    assert record["approval"] == {"approved": False, "by": "bob", "note": "not on a Friday, see https://***@wiki.example/x",
                                  "at": record["approval"]["at"]}
    manifest = json.loads(store.get(keys.manifest(str(run.id))))
    assert manifest["gate"]["promoted"] is False and manifest["gate"]["reason"] == state.message
    assert "rejected by bob: not on a Friday, see https://***@wiki.example/x" in store.get(keys.report(str(run.id))).decode()


def test_no_answer_in_time_blocks_it_and_the_run_outlives_its_lease_renewals(served, deployment, client):
    store = served.store
    before = registry.read_production(store)[0]
    run = start(client, deployment, epochs=1, min_accuracy=0.9, require_approval=True, approval_timeout=20,
                allow_regression=True)
    child = waiting_child(client, run, served)
    paused_at = time.monotonic()
    state = finished(client, run.id, served, timeout=180)
    assert time.monotonic() - paused_at >= 15  # it waited (the lease was renewed some 5 times meanwhile)
    assert state.is_completed() and state.name == "Blocked", f"{state.type} {state.name}: {state.message}"
    assert state.message == "promotion blocked: no approval within 20 s"
    assert client.read_flow_run(child.id).state.name == "Expired"
    assert registry.read_production(store)[0] == before
    assert flow_record(store, str(run.id))["reason"] == state.message
    assert "lease renewal failed" not in served.log.read_text()


def test_a_run_without_a_lasting_prefect_server_refuses_approval_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MNIST_", "AWS_"))}
    env.update(MNIST_STORE_URL=str(tmp_path / "store"), PREFECT_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "flows/train_flow.py", "--require-approval"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: require_approval needs a Prefect server that outlives the run, where a person can approve it: run "
        "it from a deployment (deployments/serve.py, prefect.yaml) or set PREFECT_API_URL to a running server"]
    assert not (tmp_path / "store").exists()  # before any work


@pytest.mark.unit
def test_what_the_report_tells_before_and_after_a_person_decides():
    from mnist_pipeline.registry import gate
    from tasks import approval

    passed = gate(0.98, 0.97, None)
    waiting = approval.awaiting(passed, 90)
    assert not waiting.promote and waiting.reason.startswith("waiting for approval until ")
    rejected = approval.Verdict(False, "promotion blocked: rejected by bob: not now", "bob", "not now")
    told = approval.told(passed, None, rejected)
    assert not told.promote and told.reason == rejected.reason and told.checks[-1].text == "rejected by bob: not now"
    approved = approval.Verdict(True, "approved by ann", "ann")
    assert approval.told(passed, passed, approved).promote
    lost_race = gate(0.98, 0.97, None, max_regression=0.0)  # promotion decided otherwise at its conditional write
    lost_race = lost_race.__class__(**{**lost_race.__dict__, "promote": False, "reason": "production changed"})
    assert approval.told(passed, lost_race, approved).reason == "production changed"
    assert approval.told(passed, None, None) is passed
    assert [approval.duration(s) for s in (20, 300, 86400, 5400)] == ["20 s", "5 min", "24 h", "90 min"]
    assert [approval.poll_interval(s) for s in (5, 60, 3600, 86400)] == [1, 2, 10, 10]
