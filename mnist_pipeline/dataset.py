"""The MNIST dataset format: the four official IDX files, their SHA-256 and sizes, bounded
decompression, IDX parsing, and the verified test set read back from the store's cache.

Every mirror serves these same bytes once decompressed; the sizes are what the IDX headers of
the official files announce, so decompression never produces more than that (a gzip bomb named
train-images stops at 47 MB instead of filling memory).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from mnist_pipeline import keys
from mnist_pipeline.errors import DatasetError, NotFoundInStore, PipelineError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


@dataclass(frozen=True)
class IdxFile:
    sha256: str
    size: int  # bytes once decompressed: header + data
    magic: int
    dims: tuple[int, ...]


FILES = {
    "train-images-idx3-ubyte": IdxFile(
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47_040_016, IMAGES_MAGIC, (60_000, 28, 28)),
    "train-labels-idx1-ubyte": IdxFile(
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60_008, LABELS_MAGIC, (60_000,)),
    "t10k-images-idx3-ubyte": IdxFile(
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7_840_016, IMAGES_MAGIC, (10_000, 28, 28)),
    "t10k-labels-idx1-ubyte": IdxFile(
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10_008, LABELS_MAGIC, (10_000,)),
}
MNIST_SHA256 = {name: f.sha256 for name, f in FILES.items()}
_CHUNK = 1 << 20


MIRROR_REMEDY = "fix or remove that mirror"
CACHE_REMEDY = "delete it: the next training run fetches the official file again and caches it"


def decompress_and_verify(name: str, gz_bytes: bytes, source: str, remedy: str = MIRROR_REMEDY) -> bytearray:
    """The raw IDX bytes, or DatasetError naming the file (`source`: where it came from), what is
    wrong with it and, `remedy`, what to do.

    Streams the decompression into a buffer of the official size and stops at the first byte
    beyond it, so memory stays flat whatever the .gz expands to."""
    expected = FILES[name]
    out = bytearray(expected.size)
    filled = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    view = memoryview(gz_bytes)
    try:
        for start in range(0, len(view), _CHUNK):
            pending = view[start:start + _CHUNK]
            while pending:
                piece = inflater.decompress(pending, min(_CHUNK, expected.size - filled + 1))
                if filled + len(piece) > expected.size:
                    raise DatasetError(
                        f"{name}.gz from {source} decompresses to more than the {expected.size:,} bytes "
                        f"of the official file (a gzip bomb or another dataset); {remedy}")
                out[filled:filled + len(piece)] = piece
                filled += len(piece)
                pending = inflater.unconsumed_tail
                if filled >= 16 and filled - len(piece) < 16:
                    _check_header(name, out, source, remedy)
            if inflater.eof:
                break
    except zlib.error as exc:
        raise DatasetError(f"{name}.gz from {source} is not a valid gzip file ({exc}); {remedy}") from None
    if not inflater.eof or filled != expected.size:
        raise DatasetError(f"{name}.gz from {source} is not a complete gzip file ({filled:,} of "
                           f"{expected.size:,} bytes): truncated or corrupted; {remedy}")
    actual = hashlib.sha256(out).hexdigest()
    if actual != expected.sha256:
        raise DatasetError(f"{name} from {source} has SHA-256 {actual}, expected {expected.sha256}: "
                           f"not the official MNIST file; {remedy}")
    return out


def _check_header(name: str, head: bytearray, source: str, remedy: str) -> None:
    """Refuse early a file whose IDX header announces something other than the official file."""
    expected = FILES[name]
    magic = int.from_bytes(head[:4], "big")
    if magic != expected.magic:
        raise DatasetError(f"{name} from {source}: magic number 0x{magic:08x}, expected "
                           f"0x{expected.magic:08x} (not an IDX file of this kind); {remedy}")


def parse_idx(name: str, raw: bytes, expected_magic: int) -> np.ndarray:
    if len(raw) < 8:
        raise DatasetError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"{name}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                           "(not an IDX file of this kind)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header + int(np.prod(dims))
    if len(raw) != expected_len:
        raise DatasetError(f"{name}: {len(raw)} bytes but its header {dims} needs {expected_len}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def cached_file(store, name: str) -> bytearray:
    """A verified file from the store's dataset cache (written by the flow's fetch stage)."""
    key = keys.mnist_file(name)
    try:
        gz = store.get(key)
    except NotFoundInStore:
        raise PipelineError(f"the MNIST files are not cached in {store.url} yet "
                            f"({key}); run `python flows/train_flow.py` once") from None
    return decompress_and_verify(name, gz, f"the store's cache ({store.location(key)})", CACHE_REMEDY)


def load_test_labels(store) -> np.ndarray:
    return parse_idx("t10k-labels-idx1-ubyte", cached_file(store, "t10k-labels-idx1-ubyte"), LABELS_MAGIC)


def unit_float32(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1], each the float32 nearest k/255, as the flow's
    normalisation gives them (tasks/normalize.py)."""
    return images.astype(np.float32) / np.float32(255)


def load_test_images(store) -> np.ndarray:
    """The 10,000 test images as float32 in [0, 1] (the flow's normalisation: x / 255)."""
    return unit_float32(parse_idx("t10k-images-idx3-ubyte", cached_file(store, "t10k-images-idx3-ubyte"), IMAGES_MAGIC))
