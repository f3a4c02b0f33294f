"""The temporary Prefect API a local run starts first: it answers, the client uses it, it stops
with the run; a configured API URL is left alone."""

import os
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              PREFECT_UI_URL, get_current_settings, temporary_settings)

from mnist_pipeline.ephemeral_server import (DEFAULT_STARTUP_TIMEOUT_S, _early, ephemeral_server, launch_early,
                                             startup_timeout_s)
from tests.conftest import REPO, prefect_home


def _port_open(url: str) -> bool:
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_starts_a_server_the_client_uses_and_stops_it(tmp_path, monkeypatch, prefect_db):
    monkeypatch.setenv("PREFECT_HOME", prefect_home(tmp_path, prefect_db))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with ephemeral_server() as server:
            assert server is not None and PREFECT_API_URL.value() == server.api_url
            assert not PREFECT_UI_URL.value()  # no UI is served: no "View at" link to a dead page
            # no heartbeats: this server dies with the run, nothing would read them
            assert get_current_settings().flows.heartbeat_frequency is None
            server.wait_ready()
            assert httpx.get(f"{server.api_url}/health").json() is True
        assert server.process.poll() is not None and not _port_open(server.api_url)
        assert PREFECT_API_URL.value() is None


def test_a_hung_server_is_reported_lost_within_prefects_request_timeout_and_our_own_stop_is_not(
        tmp_path, monkeypatch, prefect_db):
    """The watch ends a run whose server is gone (tests/test_stopped_runs.py: one that exited)."""
    import queue
    import signal

    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT

    monkeypatch.setenv("PREFECT_HOME", prefect_home(tmp_path, prefect_db))
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: 3}, restore_defaults={PREFECT_API_URL}):
        with ephemeral_server() as server:
            server.wait_ready()
            lost: queue.Queue = queue.Queue()
            server.watch(lost.put)
            time.sleep(3)
            assert lost.empty()  # answering: not lost
            server.process.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                assert lost.get(timeout=10) == "it did not answer for 3 s"
                assert time.monotonic() - t0 < 3 + 2 + 3  # the timeout, a check's period, a check's own timeout
            finally:
                server.process.send_signal(signal.SIGCONT)
            server.watch(lost.put)
        time.sleep(1)
        assert lost.empty() and server.process.poll() is not None  # stopped by us: nothing reported


def test_a_configured_api_url_is_left_alone():
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        with ephemeral_server() as server:
            assert server is None and PREFECT_API_URL.value() == "http://127.0.0.1:1/api"


def test_a_server_that_does_not_answer_in_time_is_a_one_line_error_and_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 0},
                            restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RuntimeError, match=r"did not answer within 0 s; raise PREFECT_SERVER_EPHEMERAL"):
            with ephemeral_server() as server:
                server.wait_ready()
    assert server.process.poll() is not None


def test_a_first_start_gets_longer_than_prefects_default_unless_the_user_set_a_limit(monkeypatch):
    """A new database takes 18.7 s of migrations here, TensorFlow importing beside it: Prefect's
    20 s failed a first local run. The tests' flows each start one on a fresh PREFECT_HOME."""
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert startup_timeout_s() == DEFAULT_STARTUP_TIMEOUT_S == 90
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}):
        assert startup_timeout_s() == 7


def test_a_server_launched_early_is_taken_over_or_stopped_when_the_profile_names_an_api(tmp_path, monkeypatch,
                                                                                       prefect_db):
    monkeypatch.setenv("PREFECT_HOME", prefect_home(tmp_path, prefect_db))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        launch_early()
        early = _early[0]
        with ephemeral_server() as server:
            assert server is early and PREFECT_API_URL.value() == early.api_url  # taken over, not a second one
            server.wait_ready()
        assert early.process.poll() is not None and not _early
    launch_early()  # the profile (here: the settings) names an API after all
    early = _early[0]
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        with ephemeral_server() as server:
            assert server is None and early.process.poll() is not None


def test_a_usage_error_leaves_no_server_behind(tmp_path):
    """`python flows/train_flow.py` launches the server before it parses its arguments; a bad one
    exits 2 at once, and the server it launched goes with it."""
    home = str(tmp_path / "prefect-home")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "flows/train_flow.py", "--epochs", "0"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(env, PREFECT_HOME=home))
    assert proc.returncode == 2 and proc.stderr.startswith("error: parameter epochs=0 is invalid")
    time.sleep(1)
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server:create_app" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("PREFECT_HOME") == home:
                left.append(p.pid)
        except psutil.Error:
            pass
    assert not left
