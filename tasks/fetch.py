"""fetch: the four official MNIST IDX files, verified by SHA-256, cached in the store."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mnist_pipeline.errors import DatasetError, MirrorUnavailable, NotFoundInStore
from mnist_pipeline.retry import retry_if_transient
from mnist_pipeline.store import ArtifactStore

# SHA-256 of the decompressed files: every mirror serves these same bytes once decompressed.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
CACHE_PREFIX = "datasets/mnist/"
_MAX_GZ_BYTES = 64 * 1024 * 1024  # the largest file is ~10 MB; refuse a runaway download


def read_mirror(mirror: str, filename: str, timeout_s: float = 30.0) -> bytes:
    """Bytes of `filename` from an HTTP(S) base URL or a local folder.

    FileNotFoundError when the mirror answers but lacks the file, OSError on network failure.
    """
    if mirror.startswith(("http://", "https://")):
        url = mirror.rstrip("/") + "/" + filename
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.read(_MAX_GZ_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                raise FileNotFoundError(f"HTTP {exc.code}") from None
            raise OSError(f"HTTP {exc.code}") from None
    folder = Path(mirror[len("file://"):] if mirror.startswith("file://") else mirror)
    return (folder.expanduser() / filename).read_bytes()


def decompress_and_verify(name: str, gz_bytes: bytes, source: str) -> bytes:
    """The raw IDX bytes, or DatasetError naming the file and what is wrong with it."""
    try:
        raw = gzip.decompress(gz_bytes)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{name}.gz from {source} is not a complete gzip file ({exc}); "
                           "the download is truncated or corrupted, fix or remove that mirror") from None
    actual = hashlib.sha256(raw).hexdigest()
    expected = MNIST_SHA256[name]
    if actual != expected:
        raise DatasetError(f"{name} from {source} has SHA-256 {actual}, expected {expected}; "
                           "this mirror does not serve the official MNIST files")
    return raw


def _from_cache(store: ArtifactStore, name: str) -> bytes | None:
    try:
        gz = store.get(CACHE_PREFIX + name + ".gz")
    except NotFoundInStore:
        return None
    try:
        return decompress_and_verify(name, gz, "the store cache")
    except DatasetError:
        return None  # a damaged cache entry is ignored and refetched, then overwritten


def _from_mirrors(name: str, mirrors: tuple[str, ...], timeout_s: float) -> tuple[bytes, bytes, str]:
    failures = []
    for mirror in mirrors:
        try:
            gz = read_mirror(mirror, name + ".gz", timeout_s)
        except FileNotFoundError as exc:
            failures.append(f"{mirror}: missing ({exc.strerror or exc})")
            continue
        except OSError as exc:
            failures.append(f"{mirror}: {getattr(exc, 'reason', None) or exc}")
            continue
        if len(gz) > _MAX_GZ_BYTES:
            raise DatasetError(f"{name}.gz from {mirror} is larger than {_MAX_GZ_BYTES} bytes; not MNIST")
        return decompress_and_verify(name, gz, mirror), gz, mirror
    tried = "; ".join(failures)
    if all(": missing" in f for f in failures):
        raise DatasetError(f"{name}.gz is on none of the mirrors ({tried}); fix MNIST_MIRRORS")
    raise MirrorUnavailable(f"{name}.gz: no mirror answered ({tried}); check the network or MNIST_MIRRORS")


def fetch_mnist(store: ArtifactStore, mirrors: tuple[str, ...], timeout_s: float = 30.0,
                log=None) -> dict[str, bytes]:
    """Raw, verified IDX bytes of the four files: from the store cache, else from the mirrors.

    Files fetched from a mirror are cached only once all four verify, so a bad mirror leaves no
    trace in the store.
    """
    raw: dict[str, bytes] = {}
    to_cache: dict[str, bytes] = {}
    sources: dict[str, str] = {}
    for name in MNIST_SHA256:
        cached = _from_cache(store, name)
        if cached is not None:
            raw[name], sources[name] = cached, "cache"
            continue
        raw[name], to_cache[name], sources[name] = _from_mirrors(name, mirrors, timeout_s)
    for name, gz in to_cache.items():
        store.put(CACHE_PREFIX + name + ".gz", gz, "application/gzip")
    if log:
        log.info("MNIST files: %s", ", ".join(f"{n} <- {s}" for n, s in sources.items()))
    return raw


@task(name="fetch", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def fetch_task(store: ArtifactStore, mirrors: tuple[str, ...]) -> dict[str, bytes]:
    return fetch_mnist(store, mirrors, log=get_run_logger())
