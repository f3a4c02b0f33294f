"""A run stopped before its end, for real: `python flows/train_flow.py` (and tune_flow.py, with
its LocalCluster) sent SIGTERM or SIGINT, SIGKILLed, or its temporary Prefect server killed
during the training. Each ends in one line and a true exit status, in seconds, production
unchanged, and nothing it started is left running (found by the test's own PREFECT_HOME in the
processes' environment: the server, Dask's workers, multiprocessing's helpers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, prefect_home, wait_for
from tests.faults import FlowProcess, processes_of


@pytest.fixture
def run_env(mnist_mirror, tmp_path, prefect_db) -> dict:
    env = dict(os.environ, PREFECT_HOME=prefect_home(tmp_path / "prefect", prefect_db), MNIST_MIRRORS=str(mnist_mirror),
               MNIST_STORE_URL=str(tmp_path / "store"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for name in ("PREFECT_API_URL", "MNIST_DASK_ADDRESS", "MNIST_MIN_ACCURACY", "MNIST_NOTIFY_URL"):
        env.pop(name, None)
    return env


def training(env: dict) -> FlowProcess:
    """5 short epochs: the signal lands while Keras is inside fit."""
    flow = FlowProcess([sys.executable, "flows/train_flow.py", "--epochs", "5", "--validation-size", "1000"],
                       REPO, env)
    flow.wait_for("epoch 1/5", timeout=300)
    return flow


def searching(env: dict) -> FlowProcess:
    flow = FlowProcess([sys.executable, "flows/tune_flow.py", "--trials", "6", "--epochs", "3", "--train-limit", "8000",
                        "--max-parallel", "2"], REPO, env)
    flow.wait_for("search: random over the mlp space", timeout=300)
    return flow


def stopped_output(flow: FlowProcess, since: int) -> tuple[str, list[str]]:
    """What the run printed after it was stopped, and its error lines."""
    after = "".join(flow.lines[since:])
    return after, [line for line in after.splitlines() if line.startswith("error:")]


# SIGTERM as `kill` sends it, to the run's process; SIGINT as a terminal's Ctrl-C does, to its whole
# process group (the run's Dask workers too).
SIGNALS = [pytest.param(signal.SIGTERM, 143, os.kill, id="SIGTERM"),
           pytest.param(signal.SIGINT, 130, os.killpg, id="Ctrl-C")]


def assert_nothing_left(env: dict, within_s: float = 10) -> None:
    wait_for(lambda: not processes_of(env["PREFECT_HOME"]), within_s, "every process of the run gone", 0.2)


def assert_production_unchanged(env: dict) -> None:
    assert not (Path(env["MNIST_STORE_URL"]) / "registry" / "production.json").exists()


@pytest.mark.parametrize("signum,status,send", SIGNALS)
def test_a_signal_during_training_ends_the_run_in_one_line_and_stops_its_server(run_env, signum, status, send):
    """Before: SIGTERM left the server running (parent 1, 240 MB); Ctrl-C printed a 90-line
    traceback."""
    flow = training(run_env)
    assert processes_of(run_env["PREFECT_HOME"])  # the temporary server, to be stopped
    since, t0 = len(flow.lines), time.monotonic()
    send(flow.proc.pid, signum)
    code = flow.wait(60)
    seconds = time.monotonic() - t0
    after, errors = stopped_output(flow, since)
    print(f"STOPPED {signum.name} ({send.__name__}) during training: exit {code} after {seconds:.1f} s, {len(after.splitlines())} lines")
    assert code == status and seconds < 10, flow.output[-3000:]
    assert errors == [f"error: interrupted by {signum.name}; production unchanged"] and "Traceback" not in after
    assert_nothing_left(run_env, within_s=2)
    assert_production_unchanged(run_env)


def test_a_lost_prefect_server_ends_the_run_within_seconds_in_one_line(run_env):
    """Before: 275 s, 250 lines and 5 tracebacks, each API call retried for a minute."""
    flow = training(run_env)
    (server,) = [p for p in processes_of(run_env["PREFECT_HOME"])
                 if "mnist_pipeline.prefect_server" in " ".join(psutil.Process(p).cmdline())]
    since, t0 = len(flow.lines), time.monotonic()
    os.kill(server, signal.SIGKILL)
    code = flow.wait(120)
    seconds = time.monotonic() - t0
    after, errors = stopped_output(flow, since)
    print(f"STOPPED Prefect server killed during training: exit {code} after {seconds:.1f} s, "
          f"{len(after.splitlines())} lines")
    assert code == 1 and seconds < 5, flow.output[-3000:]
    assert errors == ["error: run failed: the Prefect server stopped answering (its process ended (killed by "
                      "SIGKILL)); production unchanged"]
    assert "Traceback" not in after and len(after.splitlines()) <= 3, after
    assert_nothing_left(run_env)
    assert_production_unchanged(run_env)


# Ctrl-C during a search in `make test-all`: the training's Ctrl-C test covers the process group.
@pytest.mark.parametrize("signum,status,send", [SIGNALS[0], pytest.param(*SIGNALS[1].values, id="Ctrl-C",
                                                                         marks=pytest.mark.slow)])
def test_a_signal_during_a_search_stops_the_local_clusters_workers_too(run_env, signum, status, send):
    flow = searching(run_env)
    assert len(processes_of(run_env["PREFECT_HOME"])) >= 3  # the server and two Dask workers
    since, t0 = len(flow.lines), time.monotonic()
    send(flow.proc.pid, signum)
    code = flow.wait(60)
    seconds = time.monotonic() - t0
    after, errors = stopped_output(flow, since)
    print(f"STOPPED {signum.name} ({send.__name__}) during a search: exit {code} after {seconds:.1f} s")
    assert code == status and seconds < 15, flow.output[-3000:]
    assert errors == [f"error: interrupted by {signum.name}; production unchanged"] and "Traceback" not in after
    assert_nothing_left(run_env, within_s=2)
    assert_production_unchanged(run_env)


def test_a_killed_run_takes_its_server_and_its_dask_workers_with_it(run_env):
    """SIGKILL to the flow's process alone (not its group): nothing can clean up in it. The
    server dies by its parent-death signal, the workers by Dask's own watch on their parent."""
    flow = searching(run_env)
    left = processes_of(run_env["PREFECT_HOME"])
    assert len(left) >= 3
    t0 = time.monotonic()
    os.kill(flow.proc.pid, signal.SIGKILL)
    flow.wait(30)
    assert_nothing_left(run_env, within_s=10)
    print(f"STOPPED SIGKILL during a search: {len(left)} processes gone {time.monotonic() - t0:.1f} s later")


SWALLOWED = """
import gc, os, signal, time
from flows import plumbing

def callback(phase, info):  # a garbage-collector callback (Dask has one): Python swallows what it raises
    if phase == "start" and not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(10))  # the handler runs in here

fired = []
gc.callbacks.append(callback)
try:
    with plumbing.stop_signals_raise():
        t0 = time.monotonic()
        gc.collect()
        while time.monotonic() - t0 < 5:
            pass
    print("went on")
except KeyboardInterrupt as exc:
    print(f"interrupted by {exc} after {time.monotonic() - t0:.2f} s")
"""


def test_an_interruption_swallowed_by_a_garbage_collector_callback_is_delivered_again():
    """A SIGTERM during a search once let the run go on to its end: Prefect's TerminationSignal
    was raised inside Dask's GC callback, and Python dropped it ("Exception ignored in ...")."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("interrupted by SIGTERM after 0.") and proc.stderr == "", proc.stdout + proc.stderr


def test_ctrl_c_while_the_run_is_still_importing_is_one_line_too(run_env):
    """The temporary server is launched first thing, while the process imports Prefect (seconds):
    a Ctrl-C then printed an import's traceback, and the server's own."""
    flow = FlowProcess([sys.executable, "flows/train_flow.py", "--epochs", "1"], REPO, run_env)
    # the server, not the run's own process (whose environment holds the same PREFECT_HOME): a
    # Ctrl-C while Python itself is still starting is Python's (exit -2), before any code of ours
    wait_for(lambda: set(processes_of(run_env["PREFECT_HOME"])) - {flow.proc.pid}, 30, "the early server", 0.02)
    time.sleep(0.2)
    os.killpg(flow.proc.pid, signal.SIGINT)
    assert flow.wait(30) == 130
    assert flow.output.strip() == "error: interrupted by SIGINT", flow.output[-3000:]
    assert_nothing_left(run_env, within_s=5)
