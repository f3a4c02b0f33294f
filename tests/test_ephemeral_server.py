"""The temporary Prefect API a local run starts first: it answers, the client uses it, it stops
with the run; a configured API URL is left alone."""

import socket

import httpx
import pytest
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              PREFECT_UI_URL, temporary_settings)

from mnist_pipeline.ephemeral_server import DEFAULT_STARTUP_TIMEOUT_S, ephemeral_server, startup_timeout_s


def _port_open(url: str) -> bool:
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_starts_a_server_the_client_uses_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with ephemeral_server() as server:
            assert server is not None and PREFECT_API_URL.value() == server.api_url
            assert not PREFECT_UI_URL.value()  # no UI is served: no "View at" link to a dead page
            server.wait_ready()
            assert httpx.get(f"{server.api_url}/health").json() is True
        assert server.process.poll() is not None and not _port_open(server.api_url)
        assert PREFECT_API_URL.value() is None


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
