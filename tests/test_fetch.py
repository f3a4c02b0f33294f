"""fetch on the real MNIST files: local and HTTP mirrors, the S3 cache, and bad mirrors."""

import functools
import gzip
import http.server
import shutil
import threading
import time

import pytest

from mnist_pipeline import keys
from mnist_pipeline.errors import DatasetError, MirrorUnavailable
from tasks.fetch import MNIST_SHA256, fetch_mnist
from tests.conftest import REPO, free_port
from tests.faults import DrippingMirror

FILES = [name + ".gz" for name in MNIST_SHA256]


@pytest.fixture
def mirror_copy(mnist_mirror, tmp_path):
    """A writable copy of the mirror, to damage."""
    folder = tmp_path / "mirror"
    shutil.copytree(mnist_mirror, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


@pytest.fixture
def http_mirror(mnist_mirror):
    """The mirror served over real HTTP on 127.0.0.1."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mnist_mirror))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_fetch_from_local_mirror_caches_to_s3_then_refetches_without_mirror(s3_store, mnist_mirror, tmp_path):
    raw = fetch_mnist(s3_store, (str(mnist_mirror),))
    assert sorted(raw) == sorted(MNIST_SHA256)
    assert len(raw["train-images-idx3-ubyte"]) == 16 + 60000 * 784
    assert s3_store.list(keys.MNIST_CACHE) == sorted(keys.MNIST_CACHE + f for f in FILES)
    gone = str(tmp_path / "no-such-mirror")
    assert fetch_mnist(s3_store, (gone,)) == raw  # the verified cache alone serves the run


def test_fetch_over_http_and_fall_through_a_dead_mirror(local_store, http_mirror):
    dead = f"http://127.0.0.1:{free_port()}/mnist/"
    raw = fetch_mnist(local_store, (dead, http_mirror), deadline_s=5)
    assert len(raw["t10k-labels-idx1-ubyte"]) == 8 + 10000
    assert len(local_store.list(keys.MNIST_CACHE)) == 4


def test_a_mirror_url_with_a_query_keeps_it_after_the_file_name(local_store, mnist_mirror):
    """`.../mnist/?sig=X` was asked for `.../mnist/?sig=X/train-images-idx3-ubyte.gz`: a signed
    mirror answers only a request that carries its query."""
    asked = []

    class Signed(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(mnist_mirror), **kwargs)

        def do_GET(self):
            asked.append(self.path)
            if not self.path.endswith(".gz?sig=abc"):
                self.send_error(403)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Signed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = fetch_mnist(local_store, (f"http://127.0.0.1:{server.server_address[1]}/?sig=abc",), deadline_s=5)
    finally:
        server.shutdown()
    assert len(raw["t10k-labels-idx1-ubyte"]) == 8 + 10000 and asked[0] == "/train-images-idx3-ubyte.gz?sig=abc"


def test_mirror_without_the_file_falls_through_to_the_next(local_store, mirror_copy, mnist_mirror):
    (mirror_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    raw = fetch_mnist(local_store, (str(mirror_copy), str(mnist_mirror)))
    assert len(raw) == 4


def test_a_damaged_cache_entry_is_refetched(local_store, mnist_mirror):
    fetch_mnist(local_store, (str(mnist_mirror),))
    local_store.put(keys.MNIST_CACHE + FILES[0], b"garbage")
    raw = fetch_mnist(local_store, (str(mnist_mirror),))
    assert len(raw[FILES[0][:-3]]) == 16 + 60000 * 784
    assert gzip.decompress(local_store.get(keys.MNIST_CACHE + FILES[0])) == raw[FILES[0][:-3]]


def _assert_nothing_cached(store):
    assert store.list(keys.MNIST_CACHE) == []


def test_a_bad_copy_on_a_mirror_falls_through_to_the_next_with_a_warning(local_store, mirror_copy, mnist_mirror, caplog):
    """The first mirror's truncated file ended the run; the good second mirror was never asked."""
    import logging

    target = mirror_copy / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    log = logging.getLogger("test-fetch")
    with caplog.at_level(logging.WARNING, "test-fetch"):
        raw = fetch_mnist(local_store, (str(mirror_copy), str(mnist_mirror)), log=log)
    assert len(raw) == 4 and local_store.get(keys.mnist_file("train-labels-idx1-ubyte")) == \
        (mnist_mirror / "train-labels-idx1-ubyte.gz").read_bytes()
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"train-labels-idx1-ubyte.gz: train-labels-idx1-ubyte.gz from {mirror_copy} is not a "
                              "complete gzip file") and warning.endswith(f"; {mnist_mirror}'s copy verified")


def test_a_bad_copy_and_a_missing_one_fail_once_naming_both(local_store, mirror_copy, tmp_path):
    target = mirror_copy / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    looped = tmp_path / "looped"
    looped.mkdir()
    (looped / "train-labels-idx1-ubyte.gz").symlink_to(looped / "train-labels-idx1-ubyte.gz")  # a link loop
    with pytest.raises(DatasetError) as err:  # permanent: no mirror is down, so no retry would help
        fetch_mnist(local_store, (str(looped), str(mirror_copy)))
    message = str(err.value)
    assert message.startswith("train-labels-idx1-ubyte.gz: no mirror has a good copy (") and \
        f"{looped}: cannot be read (Too many levels of symbolic links)" in message and "truncated" in message
    assert message.endswith("; fix MNIST_MIRRORS")
    _assert_nothing_cached(local_store)


def test_a_folder_on_a_hung_mount_stays_a_transient_failure_and_the_order_is_the_mirrors(local_store, mirror_copy,
                                                                                         monkeypatch):
    """A folder error that waiting may mend (ETIMEDOUT on a network mount) is retried by the flow;
    only a folder that can never be read (a link loop) is permanent."""
    import errno

    from mnist_pipeline.errors import MirrorUnavailable, is_transient
    from tasks import fetch

    real = fetch.open_regular

    def hung_mount(path):
        if "/nfs/" in str(path):
            raise OSError(errno.ETIMEDOUT, "Connection timed out")
        return real(path)
    monkeypatch.setattr(fetch, "open_regular", hung_mount)
    target = mirror_copy / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(MirrorUnavailable) as err:
        fetch_mnist(local_store, (str(mirror_copy), "/mnt/nfs/mnist"))
    message = str(err.value)
    assert is_transient(err.value) and message.startswith("train-labels-idx1-ubyte.gz: no mirror gave a good copy (")
    assert message.index(str(mirror_copy)) < message.index("/mnt/nfs/mnist: no answer (Connection timed out)")


def test_truncated_gz_is_a_clear_error_and_nothing_is_cached(s3_store, mirror_copy):
    target = mirror_copy / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        fetch_mnist(s3_store, (str(mirror_copy),))
    assert "train-labels-idx1-ubyte.gz" in str(err.value) and "truncated" in str(err.value)
    _assert_nothing_cached(s3_store)


def test_wrong_checksum_names_file_expected_and_actual(s3_store, mirror_copy):
    target = mirror_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # same format, one label changed: a different dataset
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError) as err:
        fetch_mnist(s3_store, (str(mirror_copy),))
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message and MNIST_SHA256["t10k-labels-idx1-ubyte"] in message
    import hashlib
    assert hashlib.sha256(bytes(raw)).hexdigest() in message and "\n" not in message
    _assert_nothing_cached(s3_store)


def test_mirror_with_a_file_missing_is_a_clear_error(local_store, mirror_copy):
    (mirror_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        fetch_mnist(local_store, (str(mirror_copy),))
    assert "train-labels-idx1-ubyte.gz is on none of the mirrors" in str(err.value)
    _assert_nothing_cached(local_store)


def test_unreachable_mirrors_are_a_transient_error(local_store):
    dead = tuple(f"http://127.0.0.1:{free_port()}/" for _ in range(2))
    with pytest.raises(MirrorUnavailable) as err:
        fetch_mnist(local_store, dead, deadline_s=2)
    assert "no mirror answered" in str(err.value) and dead[0] in str(err.value)
    _assert_nothing_cached(local_store)


def _gzip_bomb(path, gigabytes: float) -> None:
    """A small .gz that decompresses to `gigabytes` GB: the official images header, then zeros."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 24)
    header = b"".join(n.to_bytes(4, "big") for n in (0x803, 60000, 28, 28))
    with open(path, "wb") as fh:
        fh.write(packer.compress(header))
        for _ in range(int(gigabytes * 64)):
            fh.write(packer.compress(zeros))
        fh.write(packer.flush())


def test_a_gzip_bomb_stops_at_the_official_size_with_flat_memory(mirror_copy, tmp_path):
    """A 1 GB bomb named train-images: refused at 47 MB, the official file's size. Measured in a
    fresh process: its peak memory, and the time to refuse."""
    import json
    import subprocess
    import sys

    _gzip_bomb(mirror_copy / "train-images-idx3-ubyte.gz", 1.0)
    gz_mb = (mirror_copy / "train-images-idx3-ubyte.gz").stat().st_size / 2**20
    probe = f"""
import json, time, tracemalloc
from mnist_pipeline.store import LocalStore
from mnist_pipeline.errors import DatasetError
from tasks.fetch import fetch_mnist
tracemalloc.start()
t0 = time.monotonic()
try:
    fetch_mnist(LocalStore({str(tmp_path / "store")!r}), ({str(mirror_copy)!r},))
    error = None
except DatasetError as exc:
    error = str(exc)
print(json.dumps({{"error": error, "seconds": time.monotonic() - t0,
                  "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"FAIL-FAST gzip bomb ({gz_mb:.1f} MB .gz, 1 GB of zeros): refused in {result['seconds']:.2f} s, "
          f"peak memory allocated while fetching {result['peak_mb']:.0f} MB")
    assert result["error"].startswith("train-images-idx3-ubyte.gz from ")
    assert "decompresses to more than the 47,040,016 bytes of the official file" in result["error"]
    assert result["peak_mb"] < 100  # the 47 MB buffer and the .gz, not 1 GB
    assert not (tmp_path / "store" / "datasets").exists()


def test_a_dripping_mirror_is_given_up_on_at_the_deadline(local_store, mnist_mirror):
    drip = DrippingMirror(interval=0.2)
    t0 = time.monotonic()
    try:
        with pytest.raises(MirrorUnavailable) as err:
            fetch_mnist(local_store, (drip.url,), deadline_s=2)
    finally:
        drip.close()
    elapsed = time.monotonic() - t0
    print(f"FAIL-FAST dripping mirror (1 byte / 0.2 s), deadline 2 s: gave up after {elapsed:.1f} s")
    assert 2 <= elapsed < 4 and "too slow" in str(err.value)
    # the next mirror in the list is still tried
    raw = fetch_mnist(local_store, (DrippingMirror(0.2).url, str(mnist_mirror)), deadline_s=1)
    assert len(raw) == 4
