"""Shared fixtures: the real MNIST files (local mirror), real S3 endpoints on 127.0.0.1 (a moto
server process, and Ceph's radosgw), real Prefect servers (on SQLite, and on a private
PostgreSQL cluster), started here and torn down at the end."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The longest files (serial seconds on a 2-core machine, 2026-12-07), first: `make test` hands whole
# files to two processes in collection order (xdist's own order, most tests first, is turned off in
# the Makefile), and a long file handed out last runs on alone.
LONGEST_FIRST = ("test_deployment.py", "test_train_flow.py", "test_approval.py", "test_reliability.py",
                 "test_workpool.py", "test_stopped_runs.py", "test_data_deployment.py", "test_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order stays


def pytest_sessionstart(session):
    session.config.started_at = time.time()


def pytest_terminal_summary(terminalreporter, config):
    """Where the screenshots of the pages the tests opened in Chromium are (tests/browser.py):
    read from the folder, since the tests may have run in other processes (pytest-xdist)."""
    from tests.browser import ARTIFACTS

    taken = [p for p in ARTIFACTS.glob("*.png") if p.stat().st_mtime >= config.started_at]
    if taken:
        terminalreporter.write_line(f"screenshots of the pages opened in Chromium ({len(taken)}): {ARTIFACTS}/")


@pytest.fixture(autouse=True)
def package_log_handlers():
    """Each test starts with the package logger as it found it. A flow run in a test's own process
    (plumbing.prepare_run) hands that logger the handlers of Prefect's "prefect.extra", pytest's
    capture handler among them, which pytest reuses for every later test: a later test's caplog
    then caught each of the package's records twice (seen when test_plumbing ran before test_store)."""
    logger = logging.getLogger("mnist_pipeline")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The official files, from ../shared/data/mnist (or MNIST_TEST_MIRROR)."""
    path = Path(os.environ.get("MNIST_TEST_MIRROR", REPO.parent / "shared" / "data" / "mnist"))
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST test mirror not found at {path}: set MNIST_TEST_MIRROR to a folder "
                    "holding the four official .gz files")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A moto S3 server in its own process, so tests can stop and restart it like a real outage."""

    access_key, secret_key = "testing-key-id", "testing-secret"  # moto takes any

    def __init__(self, port: int | None = None, env: dict | None = None):
        self.env = env
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, **(self.env or {})))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited at start")
                time.sleep(0.1)
        raise RuntimeError("moto server did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def s3_environment(server) -> dict[str, str]:
    """The settings that point the pipeline at a new bucket of an S3 server."""
    return {
        "MNIST_STORE_URL": f"s3://test-{uuid.uuid4().hex[:12]}",
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _env_of(server, monkeypatch) -> dict[str, str]:
    env = s3_environment(server)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _store_of_env():
    from mnist_pipeline.settings import load_settings
    from mnist_pipeline.store import open_store

    return open_store(load_settings())


@pytest.fixture
def s3_env(moto_server, monkeypatch) -> dict[str, str]:
    """Environment for a fresh bucket on the moto endpoint (created by the store when missing)."""
    return _env_of(moto_server, monkeypatch)


@pytest.fixture
def s3_store(s3_env):
    return _store_of_env()


# -- a real S3 server: Ceph's radosgw -------------------------------------------------------------
CEPH_PROGRAMS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw", "radosgw-admin")


class RadosGateway:
    """Ceph's S3 server on 127.0.0.1, from Debian's packages: one monitor, one OSD on `memstore`
    (objects in RAM), authentication off, a user made with radosgw-admin; config, data and logs in
    one folder. Figures (start-up, memory) in docs/registry.md."""

    access_key, secret_key = "radosgw-test-key", "radosgw-test-secret"

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = str(folder / "ceph.conf")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _config(self, fsid: str, mon_port: int) -> str:
        d = self.folder
        # One OSD holds every pool; without a keyring (auth none) radosgw must also offer the
        # monitor "crc", or it waits 300 s before it authenticates. The monitor commits changes
        # every 50 ms instead of every second: radosgw's pools and each bucket take ten times less.
        # tcp_nodelay: small answers leave at once, not after the client's delayed ACK (40 ms).
        # A short PG log: the OSD keeps it in RAM with the data it refers to (44 KB a write).
        return f"""[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
mon_allow_pool_size_one = true
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
[mon.a]
mon_data = {d}/mon.a
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
[osd.0]
osd_data = {d}/osd.0
osd_objectstore = memstore
osd_min_pg_log_entries = 10
osd_max_pg_log_entries = 10
osd_pg_log_trim_min = 10
osd_pg_log_dups_tracked = 10
[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1
rgw_data = {d}/rgw
ms_mon_client_mode = crc secure
"""

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run([*args, "-c", self.conf], capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def _daemon(self, *args: str) -> None:
        prctl = ctypes.CDLL(None).prctl  # looked up before the fork: the child only calls it
        self.procs.append(subprocess.Popen(  # PR_SET_PDEATHSIG: no daemon outlives a killed pytest
            [*args, "-f", "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: prctl(1, signal.SIGTERM)))

    def start(self, timeout: float = 120) -> None:
        missing = [name for name in CEPH_PROGRAMS if shutil.which(name) is None]
        if missing:
            pytest.fail(f"radosgw is not installed here ({', '.join(missing)} missing): run "
                        "`bash .ci/debian-packages` as root (Debian's radosgw, ceph-mon, ceph-osd, "
                        "ceph-common)", pytrace=False)
        for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
            (self.folder / sub).mkdir(parents=True)
        fsid, mon_port = str(uuid.uuid4()), free_port()
        Path(self.conf).write_text(self._config(fsid, mon_port))
        monmap = str(self.folder / "monmap")
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._daemon("ceph-osd", "-i", osd_id)
        self._daemon("radosgw", "-n", "client.rgw")
        deadline = time.monotonic() + timeout
        while True:  # radosgw answers once it has made its pools on the OSD
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).read()
                break
            except OSError:
                dead = [p.args[0] for p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    log = self.folder / "log" / "client.rgw.log"
                    tail = log.read_text()[-1500:] if log.exists() else ""
                    raise RuntimeError(f"radosgw did not answer within {timeout:g} s "
                                       f"(exited: {dead or 'none'}); its log ends: {tail}")
                time.sleep(0.2)
        self._run("radosgw-admin", "user", "create", "--uid", "mnist-test", "--display-name", "mnist test",
                  "--access-key", self.access_key, "--secret-key", self.secret_key)

    def remove_bucket(self, bucket: str) -> None:
        """memstore keeps every object in RAM: a test's bucket goes when the test ends."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                          aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                if page.get("Contents"):
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})
            s3.delete_bucket(Bucket=bucket)
        except s3.exceptions.NoSuchBucket:
            pass  # the test made none

    def stop(self) -> None:
        for proc in reversed(self.procs):  # radosgw, the OSD (it tells the monitor), the monitor
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="session")
def radosgw_server(tmp_path_factory):
    server = RadosGateway(tmp_path_factory.mktemp("radosgw"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def radosgw_env(radosgw_server, monkeypatch):
    """Environment for a fresh bucket on the session's radosgw, removed at the end of the test."""
    env = _env_of(radosgw_server, monkeypatch)
    yield env
    radosgw_server.remove_bucket(env["MNIST_STORE_URL"][len("s3://"):])


@pytest.fixture
def radosgw_store(radosgw_env):
    return _store_of_env()


@pytest.fixture
def local_store(tmp_path):
    from mnist_pipeline.store import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3", "radosgw"])
def store(request):
    """Each store test runs against every backend: a folder, moto ("s3") and Ceph's radosgw."""
    return request.getfixturevalue(f"{request.param}_store")


def production_of(store) -> dict | None:
    """registry/production.json as a dict (None when nothing is in production)."""
    from mnist_pipeline import registry

    production, _ = registry.read_production(store)
    return production.model_dump() if production else None


def assert_promotions_chain(promoted: list[dict], production_run_id: str) -> None:
    """The promoted history records form one unbroken chain ending at production: each names as
    `production_before` the one it replaced (no lost update). Order-independent, since two
    promoters may write their history records in either order after their conditional writes."""
    by_before = {}
    for record in promoted:
        assert record["production_before"] not in by_before, f"two promotions replaced {record['production_before']}"
        by_before[record["production_before"]] = record["run_id"]
    current, seen = None, 0
    while current in by_before:
        current, seen = by_before[current], seen + 1
    assert seen == len(promoted) and current == production_run_id


AUTH = f"admin:{uuid.uuid4().hex}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout} s")


@pytest.fixture(scope="session")
def prefect_db(tmp_path_factory) -> Path:
    """A Prefect database with every migration applied, made once per session. A Prefect server
    (the flows' temporary one included) started on a new database first runs the migrations:
    18.7 s to answer here, against 8.9 s on a copy of this one."""
    home = tmp_path_factory.mktemp("prefect-db")
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                   env=dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=""), check=True,
                   capture_output=True, timeout=300)
    return home / "prefect.db"


def prefect_home(folder: Path, db: Path) -> str:
    """A PREFECT_HOME for one test's processes, holding its own copy of the migrated database."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, folder / "prefect.db")
    return str(folder)


@contextlib.contextmanager
def running_prefect_server(home: Path, **settings: str):
    """A real `prefect server start` on 127.0.0.1: analytics off, a login required (as in compose),
    the scheduler looping every 2 s, and `settings` (its database). Yields (API URL, its log)."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL="",
               PREFECT_SERVER_API_AUTH_STRING=AUTH, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", **settings)
    log_path = home / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return urllib.request.urlopen(api + "/health", timeout=2).status == 200
        except OSError:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            return False

    try:
        wait_for(healthy, 120, "prefect server health")
        yield api, log_path
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory, prefect_db):
    """The session's Prefect server, on SQLite (a copy of the migrated database)."""
    home = Path(prefect_home(tmp_path_factory.mktemp("prefect-server-home"), prefect_db))
    with running_prefect_server(home) as server:
        yield server


@contextlib.contextmanager
def prefect_client(api: str):
    """Prefect's own client, logged in to the server at `api`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    # The settings only while the client is made and opened (it keeps its URL and headers): a
    # session-long client must not point every later test's Prefect calls at this server.
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
        c = get_client(sync_client=True)
        c.__enter__()
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def client(prefect_server):
    with prefect_client(prefect_server[0]) as c:
        yield c


# -- PostgreSQL: a private cluster for the session, and a Prefect server on it --------------------
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PREFECT_POSTGRES_DATABASE = "prefect_session"


class PostgresCluster:
    """Debian's PostgreSQL 15 in a folder of its own: TCP on 127.0.0.1 only, with a password (as
    Prefect connects), and the unix socket in the folder for the superuser (no password)."""

    user = "prefect"

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.password = uuid.uuid4().hex

    def _run(self, program: str, *args: str, input: str | None = None) -> str:
        # initdb refuses to run as root: as root, the cluster is the postgres user's
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = subprocess.run([*as_owner, str(PG_BIN / program), *args], input=input, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{program} {' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        self._run("pg_ctl", "start", "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-w",
                  "-t", "60", "-o", f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                                    f"-c unix_socket_directories={self.folder}")
        # the password on stdin, not on a command line (visible in ps)
        self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")

    def stop(self) -> None:
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.folder / "data"), "-m", "fast", "-w", "-t", "60")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement as the superuser, through the unix socket; its rows, unaligned."""
        return self._run("psql", "-h", str(self.folder), "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-", input=statement + ";\n").strip()

    def create_database(self, name: str) -> str:
        """A new database owned by the password user; its URL for Prefect."""
        self.sql(f"CREATE DATABASE {name} OWNER {self.user}")
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL 15 cluster for the session, stopped and removed at the end."""
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL 15 not found ({PG_BIN}/initdb): install it with .ci/debian-packages", pytrace=False)
    # not under pytest's temporary folder: that is root's alone (0700), and the cluster is postgres's
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="mnist-postgres-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder)


@pytest.fixture(scope="session")
def prefect_server_postgres(tmp_path_factory, postgres):
    """The session's Prefect server on PostgreSQL: its own database in the cluster (migrated as the
    server starts), reached with `postgresql+asyncpg://`. Yields (API URL, its log)."""
    url = postgres.create_database(PREFECT_POSTGRES_DATABASE)
    with running_prefect_server(tmp_path_factory.mktemp("prefect-postgres-home"),
                                PREFECT_API_DATABASE_CONNECTION_URL=url) as server:
        yield server


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def make_readonly():
    """freeze(folder): make a folder read-only for this process too (root here, so chmod would
    not stop it): a read-only bind mount of the folder onto itself. Undone at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount a read-only folder")
    frozen = []

    def freeze(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _mount("--bind", str(folder), str(folder))
            frozen.append(folder)
            _mount("-o", "remount,bind,ro", str(folder))
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot bind-mount here: {exc}")
        return folder
    yield freeze
    for folder in reversed(frozen):
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs: a disk that fills."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)
