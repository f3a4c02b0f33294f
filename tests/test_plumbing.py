"""flows/plumbing.py, what every flow shares, in-process and fast (the end-to-end runs are in
test_train_flow.py).

TensorFlow is imported in a thread while Prefect's temporary server starts. On the quickest way
out, a server that does not answer, `main` must still wait for that import: Python shutting down
under a thread inside TensorFlow's C++ start-up aborted the process (SIGABRT, "terminate called
without an active exception", exit -6 instead of 1), seen once in a full test run.
"""

import threading
import time

from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              temporary_settings)

from flows import plumbing, train_flow


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
