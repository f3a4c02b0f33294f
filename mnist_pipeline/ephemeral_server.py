"""Prefect's ephemeral API server for a one-off local run, started first and in parallel.

Without an API URL, Prefect starts this same server lazily, at the flow's first API call, and
imports its whole server application into this process just to launch it: 3 s before the server
process even starts, and 80 MB of the training process's memory. Launching it ourselves, with
our own command line (mnist_pipeline/prefect_server.py), before anything else, lets its start-up
overlap TensorFlow's import.

`python flows/X.py` launches it earlier still, before its process imports Prefect (`launch_early`,
2 s here): the server took 8-9 s to answer on this project's machine, longer than the flow's
process took to import Prefect and TensorFlow; 6.5-6.9 s since its imports pause the garbage
collector, about as long. Only this module's functions import Prefect.

While a run uses it, a thread watches it (`watch`): a server that exits, or stops answering, ends
the run in seconds, where Prefect's client would retry each of the run's API calls for a minute.
The server dies with the run's process, even a killed one (mnist_pipeline/prefect_server.py).
"""

from __future__ import annotations

import atexit
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


# A temporary server registers no block types. Prefect does it at every server start: it imports
# every installed Prefect collection to see whether their blocks changed (here prefect-dask, and
# with it dask.distributed), even when it then registers nothing. Nothing run through this server
# uses blocks, and a long-running `prefect server start` on the same database registers them at its
# own start (it finds no record that they were). Measured on this project's machine, 5 starts
# each, alternately: the server's CPU to its first answer 5.7-7.0 s, 5.2-6.2 s without. A value set
# in the environment wins.
SKIP_BLOCK_REGISTRATION = {"PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                           "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}


class EphemeralServer:
    def __init__(self, port: int, settings_env: dict[str, str]):
        """`settings_env`: Prefect's settings as environment variables, beyond os.environ."""
        self.port, self.api_url = port, f"http://127.0.0.1:{port}/api"
        prefect_root = Path(importlib.util.find_spec("prefect").origin).parent.parent  # no import
        # The command and environment of prefect.server.api.server.SubprocessASGIServer (3.8), but
        # `python -m uvicorn` with the collector paused while it imports (prefect_server.py).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mnist_pipeline.prefect_server", "--parent-pid", str(os.getpid()),
             "--app-dir", str(prefect_root),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env={**SKIP_BLOCK_REGISTRATION, **os.environ, **settings_env, "PREFECT_UI_ENABLED": "0",
                 "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
            # Its own session: a Ctrl-C at the terminal (SIGINT to the foreground process group)
            # is the run's to handle; the server would shut down under the run recording it.
            start_new_session=True)
        self._stopping = threading.Event()

    def wait_ready(self) -> None:
        timeout = startup_timeout_s()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect's temporary server exited with status "
                                   f"{self.process.returncode}; see its output above")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout} s; "
                           "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL")

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """From now until stop(), call on_lost(why), once, from a thread, when the server's process
        exits or its health check has not answered for PREFECT_API_REQUEST_TIMEOUT (Prefect's
        bound on one API request)."""
        from prefect.settings import PREFECT_API_REQUEST_TIMEOUT

        silence_s = PREFECT_API_REQUEST_TIMEOUT.value()

        def run() -> None:
            answered = next_check = time.monotonic()
            while not self._stopping.wait(WATCH_INTERVAL_S):
                why = None
                if self.process.poll() is not None:
                    why = f"its process ended ({_exit_reason(self.process.returncode)})"
                elif time.monotonic() >= next_check:
                    if self._answers(timeout=min(5.0, silence_s)):
                        answered = time.monotonic()
                    elif time.monotonic() - answered > silence_s:
                        why = f"it did not answer for {silence_s:g} s"
                    next_check = time.monotonic() + HEALTH_CHECK_EVERY_S
                if why and not self._stopping.is_set():  # not our own stop
                    return on_lost(why)

        threading.Thread(target=run, name="watch-prefect-server", daemon=True).start()

    def _answers(self, timeout: float = 5.0) -> bool:
        # The standard library's HTTP client: httpx's would build a TLS context (loading the CA
        # bundle, 55 ms of CPU idle, 140 ms during start-up here) to poll plain HTTP.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", "/api/health")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        # Send what this process still holds (run logs, events) while the server can take it.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        self._stopping.set()
        try:
            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
        finally:
            self._terminate()

    def _terminate(self) -> None:
        self._stopping.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


WATCH_INTERVAL_S = 0.25  # how soon a server that exited is noticed
HEALTH_CHECK_EVERY_S = 2.0  # a health check of a server that is running but may be hung


def _exit_reason(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            pass
    return f"exit status {status}"


# Prefect's own default (20 s) is too short for this server's first start on a slow machine: a
# new database is created by migrations (18.7 s alone on this project's 2-core AVX2 machine, 8.9 s
# once the database exists), with TensorFlow importing beside it (25-29 s in all). A local run
# failed on its first start with the default. A value the user set is honoured.
DEFAULT_STARTUP_TIMEOUT_S = 90


def startup_timeout_s() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return max(DEFAULT_STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_early: list[EphemeralServer] = []  # launched by launch_early, not yet taken by ephemeral_server


def launch_early() -> None:
    """Start the server now, before this process imports Prefect, unless the environment names an
    API: its settings are then the process's environment and Prefect's profile, which the server
    reads itself. ephemeral_server() takes it over, or stops it when Prefect's settings (read
    later, the profile included) say no server is wanted; an exit before that stops it too."""
    if os.environ.get("PREFECT_API_URL") or _early or \
            os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "").lower() in ("0", "false"):
        return
    server = EphemeralServer(_free_port(), {})
    _early.append(server)
    atexit.register(lambda: server.process.poll() is None and server._terminate())


@contextmanager
def ephemeral_server() -> Iterator[EphemeralServer | None]:
    """Yield a started (not yet ready) server that this process's Prefect client will use, or
    None when Prefect is configured otherwise (an API URL from the environment or the profile,
    or ephemeral mode switched off): Prefect then does what it is told."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
                                  PREFECT_SERVER_ALLOW_EPHEMERAL_MODE, PREFECT_UI_URL, get_current_settings,
                                  temporary_settings)

    early = _early.pop() if _early else None
    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        if early:
            early._terminate()
        yield None
        return
    server = early or EphemeralServer(
        _free_port(), get_current_settings().to_environment_variables(exclude_unset=True))
    try:
        # No UI URL: the UI is not served and the server ends with this process. No flow run
        # heartbeats: they let a server notice a run whose process died, and this server dies
        # with it; and the engine's heartbeat thread sleeps in 1 s steps, which the run's end
        # waited for (0.45 s in a measured run).
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_UI_URL: "",
                                 PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield server
    finally:
        server.stop()
