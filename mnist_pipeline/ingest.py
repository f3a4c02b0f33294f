"""`mnist-pipeline ingest PATH`: a folder of labelled digit images (one subfolder per digit, 0/ ...
9/) or a CSV of `path,label`, prepared as `predict` prepares images (mnist_pipeline/digits.py:
regular files only, at most 16 MP decoded, not blank), deduplicated by the SHA-256 of the prepared
28x28 pixels (against earlier versions too), split into a seeded holdout per digit, and stored as
a new dataset version (mnist_pipeline/data_versions.py).

A bad file is one line naming it and the rest are still ingested; `strict` refuses the whole input
instead. Preparing runs in a process pool when there are enough images for it to pay
(bench/data.py measures both).
"""

from __future__ import annotations

import contextlib
import csv
import io
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from mnist_pipeline import data_versions
from mnist_pipeline.data_versions import RECORD, VersionManifest
from mnist_pipeline.errors import PipelineError, PreconditionFailed
from mnist_pipeline.files import open_regular
from mnist_pipeline.params import DEFAULT_SEED
from mnist_pipeline.redaction import redact
from mnist_pipeline.store import ArtifactStore

DEFAULT_HOLDOUT = 0.2
DIGITS = tuple(str(d) for d in range(10))
MAX_IMAGES = 200_000  # per version: 157 MB of prepared images; more is several ingests
MAX_CSV_BYTES = 64 * 2**20
# A pool's start (about 0.4 s for two workers) pays from about 4,000 small images (bench/data.py,
# docs/data.md), or from fewer when they are large: photos take far longer each to decode.
POOL_FROM_IMAGES, POOL_FROM_BYTES = 4000, 32 * 2**20
PUBLISH_ATTEMPTS = 20  # versions other ingests may create meanwhile, each decided against again
FORMAT_HINT = "give a folder with one subfolder per digit (0/ ... 9/) of PNG or JPEG images, or a CSV of path,label"


@dataclass
class Ingested:
    manifest: VersionManifest
    problems: list[str] = field(default_factory=list)  # bad files and entries, one line each
    duplicates: list[str] = field(default_factory=list)  # images already there, one line each


# -- what to read ---------------------------------------------------------------------------------
def from_folder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) of every file in the digit subfolders; a line for anything else."""
    items, problems = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = os.path.join(str(root), entry.name)
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"{path}: not in a digit folder (0/ ... 9/)")
        elif entry.name not in DIGITS:
            problems.append(f"{path}: not a digit folder (0/ ... 9/); its files are not ingested")
        else:
            for image in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if image.name.startswith("."):
                    continue
                if image.is_dir():
                    problems.append(f"{image.path}: a folder inside a digit folder; give image files")
                else:
                    items.append((image.path, int(entry.name)))
    return items, problems


def from_csv(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) of each row of `path,label` (paths relative to the CSV's folder; a header
    row is allowed); a line for each row that is not one."""
    with open_regular(path) as fh:
        data = fh.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise PipelineError(f"{path} is larger than {MAX_CSV_BYTES // 2**20} MB; split it")
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path} is not a CSV of path,label ({exc})") from None
    items, problems = [], []
    for number, row in enumerate(rows, 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or cells[1] not in DIGITS:
            if number == 1 and len(cells) == 2 and cells[1] not in DIGITS and not cells[1].isdigit():
                continue  # a header
            problems.append(f"{path} line {number}: not `path,label` with a label 0-9")
            continue
        items.append((str(path.parent / cells[0]), int(cells[1])))
    return items, problems


def find_images(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    try:
        if root.is_dir():
            found = from_folder(root)
        elif root.exists():
            found = from_csv(root)
        else:
            raise PipelineError(f"{root}: no such file or folder; {FORMAT_HINT}")
    except OSError as exc:
        raise PipelineError(f"{root} cannot be read: {exc.strerror or exc}") from None
    if len(found[0]) > MAX_IMAGES:
        raise PipelineError(f"{root} holds {len(found[0]):,} images, more than the {MAX_IMAGES:,} one version may "
                            "have; ingest it in parts")
    return found


# -- preparing ------------------------------------------------------------------------------------
def prepare(path: str) -> tuple[bytes | None, str | None]:
    """(the prepared image's 784 bytes, None), or (None, why not): runs in the pool's workers."""
    from mnist_pipeline.digits import load_digit

    if "\0" in path:  # from a CSV row: the OS's "embedded null byte" would name nothing
        return None, f"{path} cannot be a file name: it holds a NUL byte"
    try:
        digit = load_digit(path)
    except ValueError as exc:
        return None, str(exc)
    return np.rint(digit * 255).astype(np.uint8).tobytes(), None


def _die_with(parent: int) -> None:
    """A pool worker's start: it ends when the ingest's process does, even killed (SIGKILL gives
    the pool no chance to stop its workers), instead of preparing images for no one."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _total_bytes(paths: list[str]) -> int:
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except (OSError, ValueError):  # ValueError: a NUL byte in the name (a CSV row can hold one)
            pass  # prepare() says what is wrong with it
    return total


def prepare_all(paths: list[str], workers: int | None = None) -> list[tuple[bytes | None, str | None]]:
    """Each path prepared, in order: in this process for a few, else in a pool of one worker per
    core, each a fresh process (spawned: not a copy of this one's threads) that dies with this one."""
    workers = workers or os.cpu_count() or 1
    if workers < 2 or (len(paths) < POOL_FROM_IMAGES and _total_bytes(paths) < POOL_FROM_BYTES):
        return [prepare(p) for p in paths]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with,
                             initargs=(os.getpid(),)) as pool:
        try:
            with _workers_starting():  # they start during map
                results = pool.map(prepare, paths, chunksize=max(16, len(paths) // (8 * workers)))
            return list(results)
        except BaseException:  # stopped (Ctrl-C, an error): what no worker has begun is dropped, not waited for
            pool.shutdown(cancel_futures=True)
            raise


@contextlib.contextmanager
def _workers_starting():
    """While the workers start, SIGINT is blocked, so that they start with it blocked: a terminal's
    Ctrl-C reaches the whole process group, and only the ingest's own process acts on it (a worker
    raised it as a traceback). Meanwhile a SIGINT or SIGTERM waits, then comes again: a worker
    whose start it interrupted died reading its start-up from this process, with a traceback.
    SIGTERM is not blocked in the workers: a broken pool ends them with it."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        yield
        return
    caught: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def holdout_mask(hashes: list[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """round(fraction x n) of each digit's images in the holdout, chosen by a seeded permutation of
    their hashes in sorted order: the same images give the same split, whatever their order."""
    mask = np.zeros(len(labels), bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        members = members[np.argsort([hashes[i] for i in members], kind="stable")]
        chosen = np.random.default_rng([seed, digit]).permutation(len(members))[:round(fraction * len(members))]
        mask[members[chosen]] = True
    return mask


# -- the whole ingest -----------------------------------------------------------------------------
def ingest(store: ArtifactStore, root: Path, *, holdout: float = DEFAULT_HOLDOUT, note: str = "",
           strict: bool = False, actor: str, seed: int = DEFAULT_SEED, workers: int | None = None,
           on_problem: Callable[[str], None] = lambda line: None) -> Ingested:
    """Read, prepare, deduplicate, split and store `root` as the next dataset version. Every bad
    file is passed to `on_problem` as it is found; PipelineError when nothing can be stored (or,
    with `strict`, when anything is bad), with nothing written."""
    items, problems = find_images(root)
    for line in problems:
        on_problem(line)
    if not items and not problems:
        raise PipelineError(f"{root} holds no images; {FORMAT_HINT}")
    prepared = prepare_all([path for path, _ in items], workers)
    images, labels, sources = [], [], []
    for (path, label), (pixels, error) in zip(items, prepared):
        if error:
            problems.append(error)
            on_problem(error)
        else:
            images.append(pixels)
            labels.append(label)
            sources.append(path)
    if strict and problems:
        raise PipelineError(f"--strict: {len(problems)} bad file(s) or entries in {root} (one line each above); "
                            "nothing was stored")
    if not images:
        raise PipelineError(f"no usable image in {root} ({len(problems)} skipped, one line each above); "
                            "nothing was stored")
    pixels = np.frombuffer(b"".join(images), np.uint8).reshape(-1, 28, 28)
    hashes = data_versions.image_hashes(pixels)
    # A note is typed by a person and may name a URL with its password or token (a path too, once
    # its `//` is collapsed): both are stored redacted, as every reader of the manifest shows them.
    meta = dict(created_by=actor, source=redact(str(root.resolve())), note=redact(note), holdout_fraction=holdout,
                seed=seed)
    earlier: dict[int, dict[str, int]] = {}  # version -> its images' hashes -> label
    for _ in range(PUBLISH_ATTEMPTS):
        versions = data_versions.list_versions(store)
        for v in versions:
            if v.version not in earlier:
                rows = data_versions.load(store, v)
                earlier[v.version] = dict(zip(data_versions.image_hashes(rows["image"]), rows["label"].tolist()))
        keep, duplicates, conflicts = _new_images(hashes, labels, sources, earlier)
        for line in conflicts:
            on_problem(line)
        if strict and conflicts:
            raise PipelineError(f"--strict: {len(conflicts)} image(s) in {root} labelled otherwise elsewhere "
                                "(one line each above); nothing was stored")
        if not keep:
            raise PipelineError(f"nothing new in {root}: every usable image is already stored or labelled "
                                f"otherwise ({len(duplicates)} duplicates, {len(conflicts)} conflicts); "
                                "nothing was stored")
        records = np.zeros(len(keep), RECORD)
        records["image"], records["label"] = pixels[keep], np.asarray(labels, np.uint8)[keep]
        records["holdout"] = holdout_mask([hashes[i] for i in keep], records["label"], holdout, seed)
        skipped = {"bad": len(problems), "duplicates": len(duplicates), "conflicting labels": len(conflicts)}
        number = (versions[-1].version if versions else 0) + 1
        try:
            manifest = data_versions.publish(store, records, number, created_at=datetime.now(timezone.utc).isoformat(),
                                             skipped={k: n for k, n in skipped.items() if n}, **meta)
        except PreconditionFailed:
            continue  # another ingest created that version meanwhile: deduplicate against it too
        for line in duplicates:
            on_problem(line)
        return Ingested(manifest, problems + conflicts, duplicates)
    raise PipelineError(f"other ingests kept creating versions ({PUBLISH_ATTEMPTS} attempts); nothing was stored, "
                        "retry")


def _new_images(hashes: list[str], labels: list[int], sources: list[str],
                earlier: dict[int, dict[str, int]]) -> tuple[list[int], list[str], list[str]]:
    """(indices of the images to store, a line per duplicate, a line per label conflict). An image
    already stored is a duplicate when its label agrees, else a conflict (the stored one stays);
    within this input, the first of identical images is kept, unless their labels disagree: then
    none is, since there is no telling which label is right."""
    keep, duplicates, conflicts, groups = [], [], [], {}
    for i, digest in enumerate(hashes):
        groups.setdefault(digest, []).append(i)
    for digest, members in groups.items():
        stored = next(((n, known[digest]) for n, known in earlier.items() if digest in known), None)
        if stored:
            for i in members:
                if labels[i] == stored[1]:
                    duplicates.append(f"{sources[i]}: a duplicate of an image in data version {stored[0]} "
                                      "(same prepared pixels); skipped")
                else:
                    conflicts.append(f"{sources[i]}: the same prepared pixels as an image in data version "
                                     f"{stored[0]}, but labelled {labels[i]}, not {stored[1]}; skipped")
        elif len({labels[i] for i in members}) > 1:
            for i in members:
                others = ", ".join(f"{sources[j]} ({labels[j]})" for j in members if j != i)
                conflicts.append(f"{sources[i]}: labelled {labels[i]}, but the same prepared pixels are labelled "
                                 f"otherwise elsewhere: {others}; skipped")
        else:
            keep.append(members[0])
            duplicates += [f"{sources[i]}: a duplicate of {sources[members[0]]} (same prepared pixels); skipped"
                           for i in members[1:]]
    return sorted(keep), duplicates, conflicts
