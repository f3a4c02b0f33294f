"""Fault injection on loopback: a TCP proxy in front of the S3 endpoint that can be cut and
restored (the endpoint goes away, the data behind it stays, as when MinIO restarts), and a
reader that follows a running flow's output so a test can strike at a given stage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time


def stop_process_groups(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM each process's group (started with start_new_session=True), all at once; SIGKILL
    the groups of those still running `grace_s` later, so nothing outlives the test."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class CuttableProxy:
    """127.0.0.1:port -> target. While cut, new connections are refused and open ones dropped.
    `answer_delay_s` holds back each piece of the target's answers: a slow server, not a mute one."""

    def __init__(self, target_port: int, answer_delay_s: float = 0.0):
        self.target = ("127.0.0.1", target_port)
        self.answer_delay_s = answer_delay_s
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cuts = 0

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self.cuts += 1
        listener, self._listener = self._listener, None
        if listener:
            # shutdown wakes the thread blocked in accept(); close alone would leave the socket
            # listening until that accept returns, letting one more connection through.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, delay in ((client, upstream, 0.0), (upstream, client, self.answer_delay_s)):
                threading.Thread(target=self._pipe, args=(a, b, delay), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class FlowProcess:
    """`python flows/train_flow.py` in its own process group, its output followed line by line."""

    def __init__(self, cmd: list[str], cwd, env: dict):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output:
                return
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"flow exited before {needle!r}:\n{self.output[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not seen in {timeout} s:\n{self.output[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the flow and everything it started (its ephemeral Prefect server too)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


class SilentEndpoint:
    """127.0.0.1:port accepts connections and never answers (a hung server, not a dead one)."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)  # read nothing, say nothing

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


class DrippingMirror:
    """An HTTP mirror that answers 200 and then sends one byte every `interval` seconds."""

    def __init__(self, interval: float = 0.5):
        import http.server

        class Drip(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(10_000_000))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"\x1f")
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def processes_of(prefect_home: str) -> list[int]:
    """Pids of the processes whose environment holds this PREFECT_HOME (a test's unique folder):
    a run's temporary Prefect server, its Dask workers, anything else it started."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("PREFECT_HOME") == prefect_home:
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found
