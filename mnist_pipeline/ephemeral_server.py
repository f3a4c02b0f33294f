"""Prefect's ephemeral API server for a one-off local run, started first and in parallel.

Without an API URL, Prefect starts this same server lazily, at the flow's first API call, and
imports its whole server application into this process just to launch it: 3 s before the server
process even starts, and 80 MB of the training process's memory. Launching it ourselves with
Prefect's own command line, before anything else, lets its start-up overlap TensorFlow's import.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import prefect
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
                              PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, PREFECT_UI_URL,
                              get_current_settings, temporary_settings)


class EphemeralServer:
    def __init__(self, port: int):
        self.api_url = f"http://127.0.0.1:{port}/api"
        # The command and environment of prefect.server.api.server.SubprocessASGIServer (3.8).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
                 "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"})

    def wait_ready(self) -> None:
        timeout = startup_timeout_s()
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"Prefect's temporary server exited with status "
                                       f"{self.process.returncode}; see its output above")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout} s; "
                           "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL")

    def stop(self) -> None:
        # Send what this process still holds (run logs, events) while the server can take it.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        try:
            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
        finally:
            self._terminate()

    def _terminate(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Prefect's own default (20 s) is too short for this server's first start on a slow machine: a
# new database is created by migrations (18.7 s alone on this project's 2-core AVX2 machine, 8.9 s
# once the database exists), with TensorFlow importing beside it (25-29 s in all). A local run
# failed on its first start with the default. A value the user set is honoured.
DEFAULT_STARTUP_TIMEOUT_S = 90


def startup_timeout_s() -> float:
    ephemeral = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return max(DEFAULT_STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ephemeral_server() -> Iterator[EphemeralServer | None]:
    """Yield a started (not yet ready) server that this process's Prefect client will use, or
    None when Prefect is configured otherwise (an API URL from the environment or the profile,
    or ephemeral mode switched off): Prefect then does what it is told."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        yield None
        return
    server = EphemeralServer(_free_port())
    try:
        # No UI URL: the UI is not served and the server ends with this process.
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
            yield server
    finally:
        server.stop()
