"""Hyperparameter search: the search space, the oracle loop, a trial, and `python flows/tune_flow.py`
on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on 127.0.0.1), also
with one worker SIGKILLed mid-trial. Run under `flock /tmp/mnist-train.lock` (the slow ones train)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mnist_pipeline.search_space import (SPACE, default_values, dimensions_for,
                                         hyperparameters_for, space_table)
from mnist_pipeline.model import build_model
from tasks.search import SearchFailed, best_record, drive_search, failed_outcome, make_oracle
from tasks.search_report import render_search_report, search_summary, table_rows
from tasks.trial import COMPLETED, FAILED, DataSource, run_trial, trial_epochs
from tests.conftest import REPO, free_port, prefect_home
from tests.faults import FlowProcess, stop_process_groups


# -- the search space ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_spaces_defaults_are_the_shipped_recipe(kind):
    """A search always covers what train_flow ships: the space's defaults are each model's own
    learning rate and batch size, and the model it builds from them is the shipped one."""
    from mnist_pipeline.params import MODEL_DEFAULTS

    values = default_values(kind)
    assert {k: values[k] for k in ("learning_rate", "batch_size")} == {
        k: MODEL_DEFAULTS[kind][k] for k in ("learning_rate", "batch_size")}
    model = build_model(kind, 1, values)
    assert model.name == f"mnist_{kind}" and model.optimizer.use_ema == (kind == "mlp")
    if kind == "mlp":  # the README model: 784x128 + 128x64 + 64x10 weights and their biases
        assert model.count_params() == 109_386


def test_space_is_declared_once_and_sampled_within_bounds(tmp_path):
    assert {d.name for d in dimensions_for("mlp")} == {"learning_rate", "units", "dropout", "batch_size"}
    assert {d.name for d in dimensions_for("cnn")} == {d.name for d in SPACE}  # + filters, augment_shift_px
    hp = hyperparameters_for("cnn")
    assert [p.name for p in hp.space] == [d.name for d in dimensions_for("cnn")]
    oracle = make_oracle("random", "cnn", trials=30, epochs=1, seed=3, directory=str(tmp_path))
    for i in range(30):
        values = oracle.create_trial(f"t{i}").hyperparameters.values
        for d in dimensions_for("cnn"):
            v = values[d.name]
            assert (v in d.values) if d.kind == "choice" else (d.low - 1e-9 <= v <= d.high + 1e-9), (d.name, v)
    assert [row["hyperparameter"] for row in space_table()] == [d.name for d in SPACE]


# -- the search loop, without a cluster ------------------------------------------------------------

class FakeCluster:
    """launch/wait_any for drive_search: trials end in launch order; a learning rate above
    `fail_above` fails as a NaN loss would. Records the most trials ever in flight."""

    def __init__(self, fail_above: float = 1.0):
        self.fail_above, self.in_flight, self.most_in_flight, self.launched = fail_above, set(), 0, []

    def launch(self, trial_id, hp_values):
        self.in_flight.add(trial_id)
        self.launched.append(hp_values)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return hp_values

    def wait_any(self, futures):
        trial_id = min(futures, key=lambda t: int(t))
        self.in_flight.discard(trial_id)
        hp = futures[trial_id]
        if hp["learning_rate"] > self.fail_above:
            return [(trial_id, {"status": FAILED, "error": "training diverged: loss became NaN/inf at epoch 1",
                                "seconds": 0.1, "worker": "tcp://w:1"})]
        return [(trial_id, {"status": COMPLETED, "val_accuracy": 1 - hp["learning_rate"], "seconds": 0.1,
                            "worker": "tcp://w:1", "epochs": trial_epochs(hp, 2)})]


def test_search_keeps_k_trials_in_flight_and_records_failed_ones(tmp_path):
    fake = FakeCluster(fail_above=0.002)
    oracle = make_oracle("random", "mlp", trials=12, epochs=2, seed=7, directory=str(tmp_path))
    seen = []
    records = drive_search(oracle, fake.launch, fake.wait_any, max_parallel=3, max_trials=12,
                           on_record=seen.append)
    assert len(records) == 12 and seen == records
    assert fake.most_in_flight == 3
    failed = [r for r in records if r["status"] == FAILED]
    # More than Keras Tuner's default limit of 3 consecutive failures would be: the search goes on.
    assert failed and all("NaN" in r["error"] and r["val_accuracy"] is None for r in failed)
    assert {t.status for t in oracle.trials.values()} <= {"COMPLETED", "FAILED"}
    best = best_record(records)
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in records if r["status"] == COMPLETED)
    assert oracle.get_best_trials()[0].trial_id == best["trial_id"]


def test_hyperband_budgets_come_from_its_brackets(tmp_path):
    fake = FakeCluster()
    oracle = make_oracle("hyperband", "mlp", trials=10, epochs=9, seed=1, directory=str(tmp_path))
    records = drive_search(oracle, fake.launch, fake.wait_any, max_parallel=2, max_trials=10)
    assert len(records) == 10
    budgets = {r["hyperband"]["tuner/epochs"] for r in records}
    assert budgets <= {1, 3, 9} and len(budgets) > 1
    assert all("tuner/epochs" not in r["hyperparameters"] for r in records)
    assert all(r["epochs"] == r["hyperband"]["tuner/epochs"] for r in records)


def test_an_aborting_outcome_stops_launching_trials(tmp_path):
    """What dask_wait_any returns when the cluster has had no worker for too long."""
    def wait_any(futures):
        return [(tid, {"status": FAILED, "error": "no Dask worker for 120 s", "abort_search": True})
                for tid in futures]

    oracle = make_oracle("random", "mlp", 10, 1, 1, directory=str(tmp_path))
    records = drive_search(oracle, lambda tid, hp: hp, wait_any, max_parallel=2, max_trials=10)
    assert len(records) == 2 and all(r["error"] == "no Dask worker for 120 s" for r in records)


def test_every_trial_failed_is_one_line_error(tmp_path):
    fake = FakeCluster(fail_above=0.0)
    records = drive_search(make_oracle("random", "mlp", 5, 1, 1, directory=str(tmp_path)), fake.launch, fake.wait_any,
                           max_parallel=2, max_trials=5)
    with pytest.raises(SearchFailed) as err:
        best_record(records)
    assert "\n" not in str(err.value) and str(err.value).startswith("all 5 trials failed (first: training diverged")


def test_bayesian_needs_scipy_and_sklearn_or_says_so_in_one_line(tmp_path):
    from mnist_pipeline.errors import PermanentError

    try:
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(PermanentError, match=r"^the bayesian algorithm needs scipy and scikit-learn"):
            make_oracle("bayesian", "mlp", 4, 1, 1, directory=str(tmp_path))
    else:
        fake = FakeCluster()
        oracle = make_oracle("bayesian", "mlp", 4, 1, 1, directory=str(tmp_path))
        assert len(drive_search(oracle, fake.launch, fake.wait_any, max_parallel=2, max_trials=4)) == 4


def test_lost_worker_outcome_is_a_failed_trial():
    from distributed.scheduler import KilledWorker

    from types import SimpleNamespace

    outcome = failed_outcome(KilledWorker("trial-key", SimpleNamespace(address="tcp://127.0.0.1:1"), 3))
    assert outcome["status"] == FAILED and outcome["worker"] == "lost" and "worker lost" in outcome["error"]


def test_report_has_trials_table_and_score_plots(tmp_path):
    fake = FakeCluster(fail_above=0.004)
    records = drive_search(make_oracle("random", "cnn", 6, 1, 2, directory=str(tmp_path)), fake.launch, fake.wait_any,
                           max_parallel=2, max_trials=6)
    summary = search_summary(algorithm="random", model="cnn", trials=6, max_parallel=2, epochs=1, seed=2,
                             cluster="test", workers=["tcp://w:1"], seconds=3.0, records=records,
                             best=best_record(records))
    page = render_search_report("run-1", summary, records)
    if os.environ.get("TUNE_REPORT_OUT"):  # to look at it: TUNE_REPORT_OUT=/tmp/r.html pytest -k report
        Path(os.environ["TUNE_REPORT_OUT"]).write_text(page)
    assert page.count("<tr>") >= 6 + 1 + 6 and "data:image/png;base64," in page and "augment_shift_px" in page
    rows = table_rows(records, "cnn")
    assert [r["trial"] for r in rows] == sorted(r["trial_id"] for r in records)
    assert {"worker", "val_accuracy", "seconds", "filters", "augment_shift_px", "error"} <= set(rows[0])


# -- one trial, in this process ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_source(mnist_mirror, tmp_path_factory):
    return DataSource(str(tmp_path_factory.mktemp("store")), (str(mnist_mirror),), 5000, 42, train_limit=512)


def test_trial_scores_on_validation_split(data_source):
    # 4096 images x 2 epochs = 256 steps: enough for the weights' moving average (momentum 0.99)
    # to leave the initial weights behind.
    source = DataSource(data_source.store_url, data_source.mirrors, 5000, 42, train_limit=4096)
    record = run_trial(default_values("mlp"), "mlp", 2, 42, source)
    assert record["status"] == COMPLETED, record["error"]
    assert 0.5 < record["val_accuracy"] <= 1.0 and record["worker"] == "local" and record["seconds"] > 0


def test_nan_loss_is_a_failed_trial_not_an_exception(data_source):
    record = run_trial({**default_values("mlp"), "learning_rate": 1e9}, "mlp", 1, 42, data_source)
    assert record["status"] == FAILED and record["val_accuracy"] is None
    assert record["error"].startswith("training diverged")


def test_trial_error_is_recorded_in_one_line(tmp_path):
    bad = DataSource(str(tmp_path / "empty-store"), (str(tmp_path / "no-mirror"),), 5000, 42)
    record = run_trial(default_values("mlp"), "mlp", 1, 42, bad)
    assert record["status"] == FAILED and "\n" not in record["error"] and "mirror" in record["error"]


# -- the flow on a real Dask cluster ---------------------------------------------------------------

class DaskCluster:
    """`dask scheduler` and N `dask worker` processes on 127.0.0.1, each in its own process
    group. Workers run without a nanny, so a killed worker stays dead (a nanny would restart it)."""

    def __init__(self, env: dict, log_dir: Path, n_workers: int = 2):
        self.env, self.log_dir, self.port = env, log_dir, free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        bin_dir = Path(sys.executable).parent
        self.procs = [self._start("scheduler", [bin_dir / "dask", "scheduler", "--host", "127.0.0.1",
                                                "--port", str(self.port), "--no-dashboard"])]
        self._wait_scheduler()
        self.workers = [self._start(f"worker-{i}", [bin_dir / "dask", "worker", self.address,
                                                    "--host", "127.0.0.1", "--nthreads", "1",
                                                    "--nworkers", "1", "--no-nanny", "--no-dashboard",
                                                    "--name", f"worker-{i}",
                                                    "--local-directory", str(log_dir / f"worker-{i}")])
                        for i in range(n_workers)]
        self.procs += self.workers
        if n_workers:
            self.client().wait_for_workers(n_workers, timeout=60)

    def _start(self, name: str, cmd: list) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        return subprocess.Popen([str(c) for c in cmd], env=self.env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_scheduler(self) -> None:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"dask scheduler did not listen on {self.port} within 60 s")

    def client(self):
        if not hasattr(self, "_client"):
            from distributed import Client

            self._client = Client(self.address, timeout=30, set_as_default=False)
        return self._client

    def worker_pids(self) -> dict[str, int]:
        return self.client().run(os.getpid)

    def stop(self) -> None:
        """Workers first, then the scheduler (a scheduler gone first makes workers log errors)."""
        if hasattr(self, "_client"):
            self._client.close()
        for group in (self.workers, self.procs[:1]):
            stop_process_groups(group, grace_s=15)


@pytest.fixture
def tune_env(mnist_mirror, tmp_path, prefect_db):
    env = dict(os.environ, PYTHONPATH=str(REPO), MNIST_MIRRORS=str(mnist_mirror),
               MNIST_STORE_URL=str(tmp_path / "store"), PREFECT_HOME=prefect_home(tmp_path / "prefect-home", prefect_db),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("MNIST_MIN_ACCURACY", "PREFECT_API_URL", "MNIST_DASK_ADDRESS"):
        env.pop(name, None)
    return env


@pytest.fixture
def cluster(tune_env, tmp_path):
    c = DaskCluster(tune_env, tmp_path)
    yield c
    c.stop()


def tune_flow(env: dict, cluster: DaskCluster, *args: str) -> FlowProcess:
    """4 trials of 1 epoch on 8,000 images (about 1.5 s each once a worker has TensorFlow and
    the data loaded); the best candidate then trains 1 epoch on the full split, and is gated."""
    return FlowProcess([sys.executable, "flows/tune_flow.py", "--trials", "4", "--epochs", "1",
                        "--train-limit", "8000", "--min-accuracy", "0.5", *args], REPO,
                       dict(env, MNIST_DASK_ADDRESS=cluster.address))


def stored_search(env: dict) -> tuple[str, dict, list[dict]]:
    store = Path(env["MNIST_STORE_URL"])
    (run_dir,) = [p for p in (store / "runs").iterdir() if (p / "tuning").is_dir()]
    search = json.loads((run_dir / "tuning" / "search.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "tuning" / "trials").glob("*.json"))]
    return run_dir.name, search, records


@pytest.mark.slow  # the default suite's killed-worker search below checks all of this too
def test_search_on_a_dask_cluster_names_each_trials_worker_and_gates_the_best(tune_env, cluster):
    flow = tune_flow(tune_env, cluster)
    code = flow.wait(900)
    assert code == 0, flow.output[-4000:]
    run_id, search, records = stored_search(tune_env)
    assert len(records) == 4 and all(r["status"] == COMPLETED for r in records)
    workers = set(cluster.worker_pids())
    assert {r["worker"] for r in records} == workers  # both workers ran trials, and are named
    # 0, not None: each worker reached the flow's temporary Prefect API (its URL travels in the
    # task's serialized settings; the workers' own environment has no PREFECT_API_URL).
    assert [r["earlier_starts"] for r in records] == [0, 0, 0, 0]
    assert_best_candidate_gated_and_linked(tune_env, run_id, search, records)


def assert_best_candidate_gated_and_linked(tune_env: dict, run_id: str, search: dict, records: list[dict]) -> None:
    assert search["best"]["trial_id"] == max(records, key=lambda r: r["val_accuracy"])["trial_id"]
    production = json.loads((Path(tune_env["MNIST_STORE_URL"]) / "registry" / "production.json").read_text())
    assert production["run_id"] == run_id  # the best candidate went through the gate and was promoted
    manifest = json.loads((Path(tune_env["MNIST_STORE_URL"]) / "runs" / run_id / "manifest.json").read_text())
    assert manifest["parameters"]["learning_rate"] == search["best"]["hyperparameters"]["learning_rate"]
    assert manifest["tuning"]["hyperparameters"] == search["best"]["hyperparameters"]  # linked, and trained
    assert manifest["tuning"]["search"] == f"runs/{run_id}/tuning/search.json"
    assert manifest["model_reused_from_earlier_attempt"] is False
    assert (Path(tune_env["MNIST_STORE_URL"]) / "runs" / run_id / "tuning" / "report.html").is_file()


def inside_keras_fit() -> bool:
    """Run on a Dask worker (its event loop thread): is any of its threads inside Keras's fit?"""
    frames = list(sys._current_frames().values())
    while frames:
        frame = frames.pop()
        if frame.f_code.co_name == "fit" and "keras" in frame.f_code.co_filename:
            return True
        if frame.f_back is not None:
            frames.append(frame.f_back)
    return False


def test_search_survives_a_worker_killed_mid_trial(tune_env, cluster):
    """SIGKILL a worker while its second trial is inside `fit`: Dask reruns that trial on the
    other worker, the search ends with all four trials, each naming its worker, the rerun one
    says how often it started before, and the best candidate is gated, promoted and linked to
    its search as usual."""
    client = cluster.client()
    pids = cluster.worker_pids()
    assert client.run(inside_keras_fit) == {addr: False for addr in pids}  # and the workers import it now
    flow = tune_flow(tune_env, cluster)
    started: dict[str, set] = {addr: set() for addr in pids}
    victim = None
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline and flow.proc.poll() is None:
        for addr, keys in client.processing().items():
            started.setdefault(addr, set()).update(keys)
            if keys and len(started[addr]) >= 2:
                victim = addr
        time.sleep(0.05)
    assert victim, "no worker started a second trial:\n" + flow.output[-3000:]
    # Kill once the victim's trial is inside Keras's `fit`, seen in its threads' stacks: by then
    # its Running state was sent (a kill before it would be a task Prefect never saw start).
    while not client.run(inside_keras_fit, workers=[victim])[victim] and client.processing().get(victim):
        time.sleep(0.02)
    assert client.processing().get(victim), "the victim's trial ended before the kill; give trials more work"
    os.kill(pids[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    code = flow.wait(900)
    assert code == 0, flow.output[-4000:]
    run_id, search, records = stored_search(tune_env)
    survivor = next(a for a in pids if a != victim)
    assert len(records) == 4 and search["trials_run"] == 4
    assert all(r["status"] == COMPLETED for r in records), records
    assert survivor in {r["worker"] for r in records}
    # The trial the victim held was rerun by the survivor; at least one trial ran there after the kill.
    assert sum(r["worker"] == survivor for r in records) >= 2
    rerun = [r for r in records if r["earlier_starts"]]
    assert len(rerun) == 1 and rerun[0]["worker"] == survivor, records  # the killed trial, finished elsewhere
    assert "rerun after 1 start(s) on a lost worker" in flow.output
    assert time.monotonic() - killed_at < 600
    assert {r["worker"] for r in records} == set(pids)  # the victim's first trial is on record too
    assert_best_candidate_gated_and_linked(tune_env, run_id, search, records)


@pytest.mark.slow  # failed 1 of 13 runs here (2026-12-08, cause not captured); its log filter: test_plumbing
def test_a_scheduler_lost_mid_search_is_one_line_and_a_failed_run(tune_env, tmp_path):
    """SIGKILL the scheduler after the first trial: the run failed with a traceback in its log and
    a five-line error (Dask's FuturesCancelledError) on stderr."""
    cluster = DaskCluster(tune_env, tmp_path, n_workers=1)
    try:
        flow = FlowProcess([sys.executable, "flows/tune_flow.py", "--trials", "30", "--max-parallel", "1", "--epochs",
                            "1", "--train-limit", "4000"], REPO, dict(tune_env, MNIST_DASK_ADDRESS=cluster.address))
        flow.wait_for("trial 00 COMPLETED", timeout=600)
        os.killpg(cluster.procs[0].pid, signal.SIGKILL)
        code = flow.wait(120)
    finally:
        cluster.stop()
    errors = [line for line in flow.output.splitlines() if line.startswith("error:")]
    assert code == 1 and "Traceback" not in flow.output, flow.output[-4000:]
    assert errors == [f"error: run failed: the Dask scheduler at {cluster.address} was lost during the search (its "
                      "trials with it); check that it is up, and run the search again"], flow.output[-3000:]


def test_a_scheduler_without_workers_is_one_line_naming_what_to_start(tune_env, tmp_path):
    """It failed after 134 s as `Flow run failed due to timeout: WorkerStartTimeoutError(0, 1)` (the
    run TimedOut); the wait is shortened here from its 120 s."""
    cluster = DaskCluster(tune_env, tmp_path, n_workers=0)
    start = ("import sys; import tasks.search as search; search.NO_WORKER_TIMEOUT_S = 3; "
             "from flows import tune_flow; sys.exit(tune_flow.main(sys.argv[1:]))")
    try:
        proc = subprocess.run([sys.executable, "-c", start, "--trials", "2", "--epochs", "1"], cwd=REPO,
                              env=dict(tune_env, MNIST_DASK_ADDRESS=cluster.address), capture_output=True,
                              text=True, timeout=300)
    finally:
        cluster.stop()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-4000:]
    assert [line for line in output.splitlines() if line.startswith("error:")] == [
        f"error: run failed: no worker joined the Dask scheduler at {cluster.address} within 3 s; start workers "
        f"for it (`dask worker {cluster.address}`)"]


@pytest.mark.slow  # the all-trials-failed line itself: test_every_trial_failed_is_one_line_error
def test_workers_without_store_access_fail_every_trial_in_one_line(tune_env, cluster, moto_server):
    """The flow's store is S3; the workers have no credentials: every trial fails (recorded), and
    the run ends with one line saying so, exit 1, nothing promoted."""
    env = dict(tune_env, MNIST_STORE_URL=f"s3://tune-{uuid.uuid4().hex[:10]}",
               AWS_ENDPOINT_URL_S3=moto_server.endpoint, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               AWS_DEFAULT_REGION="us-east-1")
    flow = tune_flow(env, cluster)
    assert flow.wait(600) == 1, flow.output[-4000:]
    last = flow.output.strip().splitlines()[-1]
    assert last.startswith("error: run failed: all 4 trials failed (first: ") and "credentials" in last, last
