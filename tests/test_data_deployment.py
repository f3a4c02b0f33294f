"""The served deployment (`deployments/serve.py`) and data that changes, on a real `prefect server
start` (the session's, on SQLite): a night with nothing new ends Unchanged in seconds; an ingest
starts a run, which trains on the new version; and when the serving process was down across
two scheduled minutes of a 1-minute cron, one run trains and the other ends Cancelled naming it.

The missed-schedule story needs two real minutes of downtime (the suite's longest wait, so two
rather than three: one replayed run is as wrong as two): its serving process is started
and killed when the module starts, so that those minutes pass while the first test runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mnist_pipeline import keys, registry
from mnist_pipeline.store import LocalStore
from tests.conftest import AUTH, REPO, wait_for
from tests.digit_images import write_folder
from tests.faults import stop_process_groups
from tests.test_cli import CLI

PARAMETERS = '{"epochs": 1, "min_accuracy": 0.9}'
NEVER = "0 0 1 1 *"  # runs of the first deployment are created by the test (as the UI does) or by events


class Served:
    """`deployments/serve.py` in its own process group, on its own store folder."""

    def __init__(self, api: str, mirror, folder, name: str, cron: str):
        self.name, self.cron, self.folder = name, cron, folder
        self.store = LocalStore(folder / "store")
        self.env = dict(os.environ, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=AUTH,
                        PREFECT_RUNNER_POLL_FREQUENCY="2",
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(folder / "home"),
                        MNIST_STORE_URL=self.store.url, MNIST_MIRRORS=str(mirror))
        self.env.pop("MNIST_MIN_ACCURACY", None)
        self.log = folder / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "deployments/serve.py", "--name", self.name, "--cron", self.cron,
                                      "--parameters", PARAMETERS], cwd=REPO, env=self.env,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def crash(self) -> None:
        """SIGKILL, as a crash or a lost machine: no chance to pause its schedule."""
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc:
            stop_process_groups([self.proc], grace_s=20)

    def deployment(self, client):
        def registered():
            try:
                return client.read_deployment_by_name(f"mnist-training/{self.name}")
            except Exception:
                return None
        return wait_for(registered, 120, f"deployment {self.name} registered")

    def runs(self, client, deployment_id):
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    def ingest(self, path) -> subprocess.CompletedProcess:
        return subprocess.run([CLI, "ingest", str(path)], env=self.env, capture_output=True, text=True, timeout=120)


def final_state(client, run_id, timeout: float, served: Served):
    def final():
        state = client.read_flow_run(run_id).state
        return state if state and state.is_final() else None
    try:
        return wait_for(final, timeout, "the flow run", interval=1)
    except TimeoutError:
        pytest.fail("run did not finish; serve log:\n" + served.log.read_text()[-4000:])


def seconds_running(client, run_id) -> tuple[float, float]:
    """(Running to its final state, Pending to its final state): the run itself, and with the
    start of its process."""
    states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
    stamp = {s.type.value: s.timestamp for s in states}
    end = states[-1].timestamp
    return (end - stamp["RUNNING"]).total_seconds(), (end - stamp["PENDING"]).total_seconds()


@pytest.fixture(scope="module")
def missed(prefect_server, mnist_mirror, tmp_path_factory, client):
    """A second served deployment, on a 1-minute cron, killed right after it registered: the
    scheduler's runs for the next minutes find nobody to run them."""
    now = datetime.now(timezone.utc)
    if now.second > 40:  # registering near a minute's end, the process could take that run
        time.sleep(62 - now.second)
    served = Served(prefect_server[0], mnist_mirror, tmp_path_factory.mktemp("missed"),
                    f"missed-{uuid.uuid4().hex[:6]}", "* * * * *")
    served.start()
    deployment = served.deployment(client)
    served.crash()
    served.killed_at = datetime.now(timezone.utc)
    yield served, deployment
    served.stop()


@pytest.fixture(scope="module")
def nightly(prefect_server, mnist_mirror, tmp_path_factory, client, missed):
    served = Served(prefect_server[0], mnist_mirror, tmp_path_factory.mktemp("nightly"),
                    f"nightly-{uuid.uuid4().hex[:6]}", NEVER)
    served.start()
    yield served, served.deployment(client)
    served.stop()


def test_a_night_with_nothing_new_is_unchanged_in_seconds_and_an_ingest_starts_a_run_that_trains(
        nightly, client, tmp_path):
    served, deployment = nightly
    assert deployment.parameters["skip_unchanged"] is True  # serve.py sets it
    first = client.create_flow_run_from_deployment(deployment.id)
    assert final_state(client, first.id, 300, served).name == "Promoted"
    second = client.create_flow_run_from_deployment(deployment.id)
    state = final_state(client, second.id, 120, served)
    running, with_start = seconds_running(client, second.id)
    print(f"\nDATA unchanged night: {running:.2f} s running, {with_start:.2f} s from Pending "
          f"(trained night: {seconds_running(client, first.id)[1]:.1f} s from Pending)")
    assert state.name == "Unchanged" and state.message.startswith(
        f"the dataset versions, code and parameters are those of production's run {first.id}")
    assert running < 5
    assert not served.store.list(keys.run_prefix(str(second.id)))
    assert [r["run_id"] for r in registry.read_history(served.store)] == [str(first.id)]

    ingest = served.ingest(write_folder(tmp_path / "new", 10, seed=21))
    assert ingest.returncode == 0, ingest.stderr
    assert ingest.stdout.splitlines()[-1] == ("event mnist.data.ingested sent: the deployments that trigger on it "
                                              "start a run")
    known = {first.id, second.id}
    # not the run the scheduler made for NEVER's next 1 January, once that is within its 100 days
    triggered = wait_for(lambda: [r for r in served.runs(client, deployment.id)
                                  if r.id not in known and not r.auto_scheduled], 60, "a run started by the event")[0]
    state = final_state(client, triggered.id, 300, served)
    assert state.name in ("Promoted", "Blocked"), f"{state.name}: {state.message}"
    manifest = registry.read_manifest(served.store, str(triggered.id))[0]
    assert [v["version"] for v in manifest["data_versions"]] == [1]
    assert manifest["changes_since_production"] == ["data: version 1 added (80 training images)"]
    assert "Traceback" not in served.log.read_text()


def test_missed_scheduled_runs_are_not_replayed_one_trains_and_the_others_name_it(missed, client):
    served, deployment = missed
    second_minute = served.killed_at.replace(second=0, microsecond=0) + timedelta(minutes=2)
    time.sleep(max(0.0, (second_minute - datetime.now(timezone.utc)).total_seconds()) + 5)
    late = [r for r in served.runs(client, deployment.id)
            if served.killed_at < r.expected_start_time < datetime.now(timezone.utc)]
    assert len(late) == 2 and all(r.state.is_scheduled() for r in late), [(r.name, r.state) for r in late]
    served.start()

    def settled():
        runs = [r for r in served.runs(client, deployment.id) if r.expected_start_time > served.killed_at]
        trained = [r for r in runs if r.state and r.state.name in ("Promoted", "Blocked")]
        return (runs, trained) if trained and all(r.state.is_final() for r in late_now(runs)) else None

    def late_now(runs):
        return [r for r in runs if r.id in {x.id for x in late}]
    runs, trained = wait_for(settled, 300, "the late runs to end", interval=2)
    client.pause_deployment(deployment.id)  # the cron keeps firing every minute: no more
    assert len(trained) == 1, [(r.name, r.state.name) for r in runs]
    winner = trained[0]
    cancelled = [r for r in late_now(runs) if r.id != winner.id]
    assert len(cancelled) >= 1 and all(r.state.is_cancelled() for r in cancelled), [(r.name, r.state) for r in runs]
    for r in cancelled:
        assert r.state.message.startswith(f"superseded by run {winner.id} ({winner.name}, due ")
        assert r.state.message.endswith("a missed scheduled run is not replayed, the newest one runs")
    assert winner.expected_start_time >= max(r.expected_start_time for r in late)
    assert [r["run_id"] for r in registry.read_history(served.store)] == [str(winner.id)]
    others = [r for r in runs if r.id != winner.id and r not in cancelled and r.state and r.state.is_final()]
    assert all(r.state.name in ("Unchanged", "Cancelled") for r in others), [(r.name, r.state) for r in others]
    assert "Traceback" not in served.log.read_text()
