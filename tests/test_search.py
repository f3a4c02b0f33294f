"""Connecting to an existing Dask scheduler (MNIST_DASK_ADDRESS) is bounded by Dask's own connect
timeout, handshake and first answer included: a host that accepts TCP and never answers, or
nothing listening, ends `python flows/tune_flow.py` in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dask
import distributed  # before any dask.config.set: it loads distributed's defaults into dask's config
import pytest

from mnist_pipeline.errors import ClusterUnavailable
from tasks.search import check_scheduler
from tests.conftest import REPO, free_port, prefect_home
from tests.faults import SilentEndpoint, processes_of


@pytest.fixture
def silent():
    endpoint = SilentEndpoint()
    yield f"tcp://127.0.0.1:{endpoint.port}"
    endpoint.close()


@pytest.mark.parametrize("peer", ["silent", "nothing listening"])
def test_a_scheduler_that_does_not_answer_is_given_up_on_at_dasks_connect_timeout(peer, silent):
    address = silent if peer == "silent" else f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ClusterUnavailable, match=r"did not answer within 2 s; check MNIST_DASK_ADDRESS"):
            check_scheduler(address)
    assert time.monotonic() - t0 < 3


def test_a_scheduler_that_answers_passes_at_once():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        t0 = time.monotonic()
        check_scheduler(cluster.scheduler_address)
        assert time.monotonic() - t0 < 1


def test_the_tune_flow_on_a_silent_scheduler_ends_in_one_line_within_the_bound(silent, mnist_mirror, tmp_path,
                                                                              prefect_db):
    """Before: no exit after 400 s. Dask's connect timeout set to 5 s (DASK_DISTRIBUTED__...)."""
    home = prefect_home(tmp_path / "prefect", prefect_db)
    env = dict(os.environ, PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", MNIST_MIRRORS=str(mnist_mirror),
               MNIST_STORE_URL=str(tmp_path / "store"), MNIST_DASK_ADDRESS=silent,
               DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="5s")
    env.pop("PREFECT_API_URL", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "flows/tune_flow.py", "--trials", "2", "--epochs", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    print(f"DASK silent scheduler, connect timeout 5 s: tune flow exit {proc.returncode} after {seconds:.1f} s")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert errors == [f"error: run failed: the Dask scheduler at {silent} did not answer within 5 s; check "
                      "MNIST_DASK_ADDRESS and that the scheduler is up (DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT "
                      "sets the wait)"]
    assert seconds < 5 + 60  # the bound, plus the start (a Prefect server, TensorFlow's import)
    assert processes_of(home) == []
