"""`main` of flows/train_flow.py, in-process and fast (the end-to-end runs are in test_train_flow.py).

TensorFlow is imported in a thread while Prefect's temporary server starts. On the quickest way
out, a server that does not answer, `main` must still wait for that import: Python shutting down
under a thread inside TensorFlow's C++ start-up aborted the process (SIGABRT, "terminate called
without an active exception", exit -6 instead of 1), seen once in a full test run.
"""

import threading
import time

from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              temporary_settings)

from flows import train_flow


def test_an_early_error_returns_only_after_the_background_import(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MNIST_STORE_URL", str(tmp_path / "store"))
    imported = threading.Event()

    def slow_import():  # stands in for TensorFlow's import, slow enough that the race is certain
        time.sleep(1.5)
        imported.set()

    monkeypatch.setattr(train_flow, "_load_tensorflow", slow_import)
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 0},
                            restore_defaults={PREFECT_API_URL}):
        status = train_flow.main([])

    assert status == train_flow.EXIT_FAILED
    assert imported.is_set(), "main returned while its TensorFlow import was still running"
    assert capsys.readouterr().err.startswith("error: Prefect's temporary server did not answer")
