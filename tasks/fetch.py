"""fetch: the four official MNIST IDX files, verified by SHA-256, cached in the store.

Downloads are bounded: a socket timeout per read, an overall deadline, and a minimum rate once
MNIST_DEADLINE_S has passed, so a mirror that drips a byte at a time is given up on in seconds,
not hours. Decompression is bounded by the official file sizes (mnist_pipeline.dataset).
"""

from __future__ import annotations

import errno
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from prefect import get_run_logger

from mnist_pipeline import keys
from mnist_pipeline.dataset import FILES, MNIST_SHA256, decompress_and_verify
from mnist_pipeline.errors import PERMANENT_ERRNOS, DatasetError, MirrorUnavailable, NotFoundInStore
from mnist_pipeline.files import open_regular
from mnist_pipeline.store import ArtifactStore
from tasks.stage import stage

__all__ = ["MNIST_SHA256", "fetch_mnist", "fetch_task", "read_mirror"]

MAX_GZ_BYTES = 64 * 1024 * 1024  # the largest official file is ~10 MB; refuse a runaway download
MIN_RATE_BYTES_S = 50 * 1024  # below this, once the deadline has passed, a mirror is too slow
OVERALL_DEADLINE_FACTOR = 6  # a whole file, however fast it still trickles: 6 x MNIST_DEADLINE_S


class MirrorTooSlow(OSError):
    pass


def _download(url: str, deadline_s: float) -> bytes:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=deadline_s) as resp:
        announced = resp.headers.get("Content-Length")
        if announced and announced.isdigit() and int(announced) > MAX_GZ_BYTES:
            raise DatasetError(f"{url} is {int(announced):,} bytes, larger than any MNIST file; not MNIST")
        chunks, total = [], 0
        while chunk := resp.read1(1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_GZ_BYTES:
                raise DatasetError(f"{url} is larger than {MAX_GZ_BYTES:,} bytes; not MNIST")
            elapsed = time.monotonic() - started
            if elapsed > OVERALL_DEADLINE_FACTOR * deadline_s:
                raise MirrorTooSlow(f"still downloading after {elapsed:.0f} s")
            if elapsed > deadline_s and total / elapsed < MIN_RATE_BYTES_S:
                raise MirrorTooSlow(f"too slow: {total:,} bytes in {elapsed:.0f} s")
    return b"".join(chunks)


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def read_mirror(mirror: str, filename: str, deadline_s: float = 20.0) -> bytes:
    """Bytes of `filename` from an HTTP(S) base URL or a local folder.

    FileNotFoundError when the mirror answers but lacks the file, OSError on network failure or
    a download that is too slow."""
    if _is_url(mirror):
        # The file name goes on the path; a query (a signed or tokened mirror) stays a query.
        parts = urllib.parse.urlsplit(mirror)
        url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + filename))
        try:
            return _download(url, deadline_s)
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                raise FileNotFoundError(f"HTTP {exc.code}") from None
            raise OSError(f"HTTP {exc.code}") from None
        except TimeoutError:
            raise OSError(f"no data for {deadline_s:g} s") from None
    folder = Path(mirror[len("file://"):] if mirror.startswith("file://") else mirror).expanduser()
    path = folder / filename
    with open_regular(path) as fh:  # a FIFO in a mirror folder would block the run
        if os.fstat(fh.fileno()).st_size > MAX_GZ_BYTES:
            raise DatasetError(f"{path} is larger than {MAX_GZ_BYTES:,} bytes; not MNIST")
        return fh.read()


def _from_cache(store: ArtifactStore, name: str) -> bytearray | None:
    try:
        gz = store.get(keys.mnist_file(name))
    except NotFoundInStore:
        return None
    try:
        return decompress_and_verify(name, gz, "the store cache")
    except DatasetError:
        return None  # a damaged cache entry is ignored and refetched, then overwritten


def _from_mirrors(name: str, mirrors: tuple[str, ...], deadline_s: float,
                  log=None) -> tuple[bytearray, bytes, str]:
    """The first mirror's copy that verifies. A mirror that lacks the file, does not answer or
    serves a bad copy is passed over for the next (a warning names a bad copy); only when none
    has a good one does it fail: transient when a mirror did not answer (a retry may find it
    back), else permanent. The failures are told in the mirrors' order."""
    failures: list[str] = []
    refused: list[DatasetError] = []
    transient = False
    for mirror in mirrors:
        try:
            gz = read_mirror(mirror, name + ".gz", deadline_s)
            raw = decompress_and_verify(name, gz, mirror)
        except FileNotFoundError as exc:
            failures.append(f"{mirror}: missing ({exc.strerror or exc})")
            continue
        except DatasetError as exc:
            refused.append(exc)
            failures.append(str(exc))
            continue
        except OSError as exc:
            # A folder that cannot be read for good (a link loop, no permission) is not helped by
            # waiting; a network mirror, or a folder on a hung network mount, may be.
            permanent = not _is_url(mirror) and exc.errno in PERMANENT_ERRNOS | {errno.ELOOP, errno.ENOTDIR,
                                                                                  errno.EISDIR}
            transient = transient or not permanent
            failures.append(f"{mirror}: {'cannot be read' if permanent else 'no answer'} "
                            f"({getattr(exc, 'reason', None) or exc.strerror or exc})")
            continue
        if log and refused:
            log.warning("%s.gz: %s; %s's copy verified", name, "; ".join(map(str, refused)), mirror)
        return raw, gz, mirror
    if refused and len(failures) == len(refused):
        raise refused[0] if len(refused) == 1 else DatasetError("; ".join(map(str, refused)))
    tried = "; ".join(failures)
    if transient:
        what = "no mirror gave a good copy" if refused else "no mirror answered"
        raise MirrorUnavailable(f"{name}.gz: {what} ({tried}); check the network or MNIST_MIRRORS")
    if not refused and all(": missing (" in f for f in failures):
        raise DatasetError(f"{name}.gz is on none of the mirrors ({tried}); fix MNIST_MIRRORS")
    raise DatasetError(f"{name}.gz: no mirror has a good copy ({tried}); fix MNIST_MIRRORS")


def fetch_mnist(store: ArtifactStore, mirrors: tuple[str, ...], deadline_s: float = 20.0,
                log=None) -> dict[str, bytearray]:
    """Raw, verified IDX bytes of the four files: from the store cache, else from the mirrors.

    Files fetched from a mirror are cached only once all four verify, so a bad mirror leaves no
    trace in the store.
    """
    raw: dict[str, bytearray] = {}
    to_cache: dict[str, bytes] = {}
    sources: dict[str, str] = {}
    for name in FILES:
        cached = _from_cache(store, name)
        if cached is not None:
            raw[name], sources[name] = cached, "cache"
            continue
        raw[name], to_cache[name], sources[name] = _from_mirrors(name, mirrors, deadline_s, log)
    for name, gz in to_cache.items():
        store.put(keys.mnist_file(name), gz, "application/gzip")
    if log:
        log.info("MNIST files: %s", ", ".join(f"{n} <- {s}" for n, s in sources.items()))
    return raw


# No task retries: every mirror is already tried in order, and the flow retries a transient
# failure as a whole (bounded: see docs/reliability.md).
@stage("fetch")
def fetch_task(store: ArtifactStore, mirrors: tuple[str, ...], deadline_s: float) -> dict[str, bytearray]:
    return fetch_mnist(store, mirrors, deadline_s, log=get_run_logger())
