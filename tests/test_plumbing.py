"""flows/plumbing.py, what every flow shares, in-process and fast (the end-to-end runs are in
test_train_flow.py).

TensorFlow is imported in a thread while Prefect's temporary server starts. On the quickest way
out, a server that does not answer, `main` must still wait for that import: Python shutting down
under a thread inside TensorFlow's C++ start-up aborted the process (SIGABRT, "terminate called
without an active exception", exit -6 instead of 1), seen once in a full test run.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              temporary_settings)

from flows import plumbing, train_flow
from tests.conftest import REPO


def test_an_early_error_returns_only_after_the_background_import(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MNIST_STORE_URL", str(tmp_path / "store"))
    imported = threading.Event()

    def slow_import():  # stands in for TensorFlow's import, slow enough that the race is certain
        time.sleep(1.5)
        imported.set()

    monkeypatch.setattr(plumbing, "_load_tensorflow", slow_import)
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 0},
                            restore_defaults={PREFECT_API_URL}):
        status = train_flow.main([])

    assert status == plumbing.EXIT_FAILED
    assert imported.is_set(), "main returned while its TensorFlow import was still running"
    assert capsys.readouterr().err.startswith("error: Prefect's temporary server did not answer")


def test_an_expected_error_is_logged_in_one_line_and_an_unexpected_one_with_its_traceback(caplog):
    import logging

    from mnist_pipeline.errors import DatasetError

    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    plumbing.quiet_expected_tracebacks()  # what every flow's body does first (plumbing.prepare_run)
    logger = logging.getLogger("prefect.task_runs")
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}), \
            caplog.at_level(logging.ERROR, logger="prefect.task_runs"):
        for exc in (DatasetError("t10k-labels-idx1-ubyte: bad"), ZeroDivisionError("a bug")):
            try:
                raise exc
            except Exception:
                logger.error("Task run failed with exception: %r", exc, exc_info=True)
    expected, unexpected = (caplog.text.split("ZeroDivisionError('a bug')")[0],
                            caplog.text.split("ZeroDivisionError('a bug')")[1])
    assert "DatasetError" in expected and "Traceback" not in expected
    assert "Traceback" in unexpected


def test_dasks_closed_connection_at_shutdown_is_one_line_and_its_warnings_keep_their_traceback(caplog):
    """distributed/batched.py logs a write to a closed connection at INFO with its traceback: seen
    once when a SIGTERM stopped a search (test_stopped_runs)."""
    import logging

    from distributed.comm.core import CommClosedError

    plumbing.quiet_expected_tracebacks()
    logger = logging.getLogger("distributed.batched")
    with caplog.at_level(logging.INFO, logger="distributed.batched"):
        for level in (logging.INFO, logging.WARNING):
            try:
                raise CommClosedError()
            except CommClosedError:
                logger.log(level, "Batched Comm Closed at level %d", level, exc_info=True)
    info, warning = caplog.text.split("Batched Comm Closed at level 30")
    assert "Batched Comm Closed at level 20" in info and "Traceback" not in info
    assert "Traceback" in warning


@pytest.mark.parametrize("stdout", ["closed pipe", "/dev/full"])
def test_a_result_line_that_cannot_be_printed_leaves_the_exit_status_true(tmp_path, stdout):
    """A blocked run exited 1 ("failed") with a traceback when its stdout was a closed pipe
    (`... | head -0`) or a full disk."""
    probe = ("import sys\nfrom prefect.states import Completed\nfrom flows.plumbing import exit_status\n"
             "sys.exit(exit_status(Completed(data={'run_id': 'r', 'promoted': False, 'test_accuracy': 0.5, "
             "'reason': 'promotion blocked: 0.5000 < 0.9700', 'report': 'x'})))\n")
    env = dict(os.environ, PREFECT_HOME=str(tmp_path))
    command = [sys.executable, "-c", probe]
    if stdout == "closed pipe":
        reader, writer = os.pipe()
        os.close(reader)
        with os.fdopen(writer, "w") as closed:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=closed, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        reason = "Broken pipe"
    else:
        with open("/dev/full", "w") as full:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=full, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        reason = "No space left on device"
    assert proc.returncode == plumbing.EXIT_BLOCKED and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"warning: the result line could not be printed ({reason}); the exit status says the outcome"]


@pytest.mark.parametrize("api", ["refused", "mute"])
def test_a_prefect_api_that_does_not_answer_is_one_line_within_its_timeout(tmp_path, monkeypatch, capsys, api):
    """PREFECT_API_URL at nothing: three chained tracebacks; at a hung server: the same after 419 s."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT

    from tests.conftest import free_port
    from tests.faults import SilentEndpoint

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MNIST_STORE_URL", str(tmp_path / "store"))
    silent = SilentEndpoint() if api == "mute" else None
    url = f"{silent.endpoint}/api" if silent else f"http://user:Api-Pa55@127.0.0.1:{free_port()}/api"
    t0 = time.monotonic()
    try:
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_REQUEST_TIMEOUT: 3}):
            status = train_flow.main(["--epochs", "1"])
    finally:
        if silent:
            silent.close()
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert status == plumbing.EXIT_FAILED and seconds < 30 and "Traceback" not in err, (seconds, err)
    [line] = err.strip().splitlines()
    if silent:
        assert line == f"error: run failed: the Prefect API at {url} did not answer within 3 s " \
                       "(PREFECT_API_REQUEST_TIMEOUT); start it, or unset PREFECT_API_URL for a temporary server; " \
                       "production unchanged"
    else:
        assert line.startswith("error: run failed: the Prefect API at http://***@127.0.0.1:") and \
            "cannot be reached (ConnectError: " in line and "Api-Pa55" not in line
    assert not (tmp_path / "store").exists()


def test_a_flow_whose_prefect_api_goes_away_mid_run_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """What Prefect's client raises once it gives up on its API (it has no state to return)."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MNIST_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setattr(plumbing, "prefect_api_answers", lambda: None)

    class GaveUp:
        description = "a flow"

        def __call__(self, **_):
            raise RuntimeError("Failed to reach API at http://admin:S3cret@10.0.0.9:4200/api/")
    with temporary_settings({PREFECT_API_URL: "http://10.0.0.9:4200/api"}):
        status = plumbing.main(GaveUp(), train_flow.TrainParams, ["--epochs", "1"])
    err = capsys.readouterr().err
    assert status == plumbing.EXIT_FAILED and err == "error: run failed: RuntimeError: Failed to reach API at " \
        "http://***@10.0.0.9:4200/api/ (MNIST_DEBUG=1 shows where); production unchanged\n"


def test_the_prefect_api_check_logs_in_and_trusts_certificates_as_prefects_client_does(tmp_path):
    """A server with its own certificate that Prefect's client reaches (PREFECT_API_SSL_CERT_FILE,
    or PREFECT_API_TLS_INSECURE_SKIP_VERIFY), behind a proxy that wants PREFECT_CLIENT_CUSTOM_HEADERS,
    must pass the check; a wrong login is named as such."""
    import http.server
    import ssl

    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE,
                                  PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_CLIENT_CUSTOM_HEADERS)

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a proxy that wants its own header, before a server that wants the login
            seen.append((self.path, self.headers.get("Authorization")))
            proxied = self.headers.get("X-Proxy-Token") == "tok"
            logged_in = self.headers.get("Authorization") == "Basic dXNlcjpwdw=="
            self.send_response(403 if not proxied else 200 if logged_in else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"https://127.0.0.1:{server.server_address[1]}/api"
    try:
        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: "user:pw",
                                 PREFECT_CLIENT_CUSTOM_HEADERS: {"X-Proxy-Token": "tok"}}):
            with pytest.raises(plumbing.PipelineError, match="cannot be reached .*CERTIFICATE_VERIFY_FAILED"):
                plumbing.prefect_api_answers()
            with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(tmp_path / "cert.pem")}):
                plumbing.prefect_api_answers()
            with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
                plumbing.prefect_api_answers()
        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: "user:wrong",
                                 PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True,
                                 PREFECT_CLIENT_CUSTOM_HEADERS: {"X-Proxy-Token": "tok"}}):
            with pytest.raises(plumbing.PipelineError, match=r"refused the login \(HTTP 401\); check PREFECT_API_AUTH"):
                plumbing.prefect_api_answers()
    finally:
        server.shutdown()
    assert seen[0] == ("/api/admin/version", "Basic dXNlcjpwdw==")


def test_a_wrong_login_to_a_real_prefect_server_is_named_before_any_work(prefect_server, tmp_path, monkeypatch, capsys):
    """A Prefect server lets /health through without the login: the check asks what needs it."""
    from prefect.settings import PREFECT_API_AUTH_STRING

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MNIST_STORE_URL", str(tmp_path / "store"))
    with temporary_settings({PREFECT_API_URL: prefect_server[0], PREFECT_API_AUTH_STRING: "admin:wrong"}):
        status = train_flow.main(["--epochs", "1"])
    assert status == plumbing.EXIT_FAILED and capsys.readouterr().err == (
        f"error: run failed: the Prefect API at {prefect_server[0]} refused the login (HTTP 401); check "
        "PREFECT_API_AUTH_STRING or PREFECT_API_KEY; production unchanged\n")
    assert not (tmp_path / "store").exists()


def test_dasks_reconnection_errors_to_a_lost_scheduler_are_one_line_each(caplog):
    """distributed.client logs each failed reconnection with an empty message and a traceback;
    one cut short by the client's closing ends in CancelledError, its cause the refused connection."""
    import asyncio
    import logging

    plumbing.quiet_expected_tracebacks()
    logger = logging.getLogger("distributed.client")
    for exc in (ConnectionRefusedError(111, "Connection refused"), asyncio.CancelledError()):
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError as refused:
                raise exc from (None if exc is refused else refused)
        except BaseException:
            with caplog.at_level(logging.ERROR, "distributed.client"):
                logger.error("", exc_info=True)
    assert "Traceback" not in caplog.text
    assert [r.getMessage() for r in caplog.records] == ["ConnectionRefusedError: [Errno 111] Connection refused"] * 2
