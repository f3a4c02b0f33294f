"""Hostile files at the edges of a run (issue 27): decompression bombs and FIFOs given to
`predict`, FIFOs in a folder store, a full disk under `model -o` and `report -o`, an interrupted
run, a swapped dataset cache, a predictions file whose header lies, a store URL with '..', a bad
flow option, a mistyped store folder. Each as a user meets it: the real console script in a child
process (its exit status, its one line, no traceback, its seconds and peak memory), the files
left behind."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from mnist_pipeline import data_versions, keys, registry
from mnist_pipeline.store import LocalStore, file_record
from tests.conftest import REPO, free_port, wait_for
from tests.fakes import cache_test_set, model_zoo, store_run

CLI = str(Path(sys.executable).parent / "mnist-pipeline")


@dataclass
class Child:
    code: int
    out: str
    err: str
    seconds: float
    peak_mb: float  # the child's own maximum resident set size

    @property
    def output(self) -> str:
        return self.out + self.err

    def one_error_line(self) -> str:
        assert "Traceback" not in self.output, self.output
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, self.err
        return lines[0]


# Starts argv and records its exit status and peak RSS from wait4. Through this small process, not
# from pytest's: a child's peak RSS counts the memory of the process it was forked from.
_LAUNCHER = """import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))
"""


def run_child(argv: list[str], env: dict, tmp_path: Path, timeout: float = 60, cwd: Path = REPO) -> Child:
    """Run argv; killed (its whole process group) after `timeout`."""
    out_path, err_path, usage_path = tmp_path / "child.out", tmp_path / "child.err", tmp_path / "child.usage"
    usage_path.unlink(missing_ok=True)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.monotonic()
        launcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(usage_path), *argv],
                                    stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        try:
            launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            pytest.fail(f"{argv} still running after {timeout} s")
    seconds = time.monotonic() - started
    code, peak_kb = json.loads(usage_path.read_text())
    return Child(code, out_path.read_text(), err_path.read_text(), seconds, peak_kb / 1024)


@pytest.fixture(scope="session")
def zoo(mnist_mirror):
    return model_zoo(mnist_mirror, noise_levels=(0.0, 0.6))


@pytest.fixture
def store(tmp_path, zoo, mnist_mirror) -> LocalStore:
    """run-a in production, run-b blocked; the test set cached as the flow leaves it."""
    store = LocalStore(tmp_path / "store")
    cache_test_set(store, mnist_mirror)
    store_run(store, "run-a", zoo[0], minutes_ago=20)
    store_run(store, "run-b", zoo[1], minutes_ago=10)
    assert registry.promote(store, registry.stored_candidate(store, "run-a"), min_accuracy=0.5).promoted
    return store


@pytest.fixture
def env(store) -> dict:
    return dict(os.environ, MNIST_STORE_URL=store.url, MNIST_MIN_ACCURACY="0.5")


def cli(env: dict, tmp_path: Path, *args: str, timeout: float = 60) -> Child:
    return run_child([CLI, *args], env, tmp_path, timeout)


def test_gc_on_a_full_disk_says_to_free_a_little_space_not_to_run_gc(tmp_path, zoo, small_tmpfs):
    """gc writes its marks before it deletes: on a full disk, the store's usual hint ("run gc")
    sent the user round in a circle."""
    store = LocalStore(small_tmpfs / "store")
    for i, run_id in enumerate(("run-a", "run-b", "run-c")):
        store_run(store, run_id, zoo[i % 2], minutes_ago=30 - 10 * i)
    fill(small_tmpfs)
    env = dict(os.environ, MNIST_STORE_URL=store.url)
    before = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))
    child = cli(env, tmp_path, "gc", "--keep-last", "1")
    assert child.code == 1 and "Traceback" not in child.output
    [line] = [line for line in child.err.splitlines() if not line.startswith("warning: nothing is in production")]
    assert line.startswith(f"error: cannot write runs/run-") and "No space left on device; free a few KB on that " \
        "disk and run gc again" in line and "run `mnist-pipeline gc`" not in line, line
    assert sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")) == before  # nothing deleted
    (small_tmpfs / "filler").unlink()
    assert cli(env, tmp_path, "gc", "--keep-last", "1").code == 0 and not store.exists("runs/run-a/predictions.npy")

# -- case 5: images ------------------------------------------------------------------------------------
def bomb_png(path: Path, side: int, bit_depth: int, colour_type: int, palette: bytes = b"") -> Path:
    """A PNG of side x side pixels, all zero: rows compressed as they are made, so the file is
    small and making it takes no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * ((side * bit_depth + 7) // 8 + 1)
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + (chunk(b"PLTE", palette) if palette else b"")
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side,bit_depth,colour_type,palette", [
    (13_370, 8, 3, b"\0\0\0\xff\xff\xff"),  # palette, just below twice Pillow's limit: Pillow only warns
    (12_000, 1, 0, b""),  # 1-bit
    (20_000, 1, 0, b""),  # beyond twice Pillow's limit: Pillow refuses to open it
])
def test_a_decompression_bomb_is_refused_by_its_pixel_count_before_decoding(env, tmp_path, side, bit_depth,
                                                                             colour_type, palette):
    bomb = bomb_png(tmp_path / "bomb.png", side, bit_depth, colour_type, palette)
    child = cli(env, tmp_path, "predict", str(bomb))
    line = child.one_error_line()
    print(f"\nEDGES bomb {side}x{side} {bit_depth}-bit ({bomb.stat().st_size:,} bytes): {child.seconds:.2f} s, "
          f"peak {child.peak_mb:.0f} MB")
    assert child.code == 1 and line.startswith(f"error: {bomb} is ")
    assert line.endswith("more than the 16,000,000 pixels a digit image may have; crop or shrink it")
    assert "Warning" not in child.output and "DecompressionBomb" not in child.output
    assert child.seconds < 15 and child.peak_mb < 250  # it decoded nothing (the bomb: gigabytes)


def test_a_phone_photo_larger_than_the_limit_is_decoded_at_a_smaller_scale(tmp_path):
    """A 50 MP JPEG (8160 x 6120, a phone's full-resolution photo) of a dark ring on paper: JPEG's
    own scaling decodes it at 1/2; the digit comes out as from the same photo taken at half size."""
    from PIL import Image, ImageDraw

    from mnist_pipeline.digits import load_digit

    def ring(width: int, height: int) -> Image.Image:
        photo = Image.new("L", (width, height), 225)
        ImageDraw.Draw(photo).ellipse((width * 0.4, height * 0.25, width * 0.6, height * 0.75), outline=30,
                                      width=width // 60)
        return photo

    ring(8160, 6120).save(tmp_path / "photo.jpg", quality=85)
    ring(4080, 3060).save(tmp_path / "half.jpg", quality=85)
    big, half = load_digit(tmp_path / "photo.jpg"), load_digit(tmp_path / "half.jpg")
    assert big.shape == (28, 28) and np.corrcoef(big.ravel(), half.ravel())[0, 1] > 0.99


def test_reading_an_image_changes_nothing_in_pillow_or_the_warnings_filters(tmp_path):
    from PIL import Image

    from mnist_pipeline.digits import load_digit

    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    bomb = bomb_png(tmp_path / "bomb.png", 13_370, 1, 0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="more than the 16,000,000 pixels"):
            load_digit(bomb)
    assert seen == [] and Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters


@pytest.mark.parametrize("make", ["fifo", "device"])
def test_predict_reads_only_regular_files_and_never_blocks(env, tmp_path, make):
    if make == "fifo":
        image = tmp_path / "x.png"
        os.mkfifo(image)
        kind = "a FIFO"
    else:
        image, kind = Path("/dev/zero"), "a character device"
    child = cli(env, tmp_path, "predict", str(image), timeout=30)
    assert child.code == 1 and child.seconds < 15
    assert child.one_error_line() == f"error: {image} is {kind}, not a regular file; give an image file"


def test_a_newline_in_a_name_is_shown_escaped_so_one_problem_is_one_line(store, env, tmp_path):
    """A file or key named with a newline printed its problem over two lines."""
    image = tmp_path / "two\nlines.png"
    image.write_bytes(b"not an image")
    child = cli(env, tmp_path, "predict", str(image), timeout=60)
    assert child.code == 1
    assert child.one_error_line().startswith(f"error: {tmp_path}/two\\nlines.png")
    (Path(store.url) / "runs/run-a/notes\r\nfrom me.txt").write_text("a foreign file")
    audit = cli(env, tmp_path, "verify", timeout=60)
    assert audit.code == 1 and "Traceback" not in audit.output
    assert audit.out.splitlines() == ["runs/run-a/notes\\r\\nfrom me.txt: not listed in its run's manifest"]
    (Path(store.url) / "runs/a\nb").mkdir()  # a listing's warning names it
    listing = cli(env, tmp_path, "runs", "--all", timeout=60)
    assert listing.code == 0 and listing.err.splitlines() == ["warning: skipped runs/a\\nb/: not a run id"]


def test_a_fifo_at_a_key_of_a_folder_store_is_one_line_naming_it(store, env, tmp_path, zoo):
    """FIFOs where a history record, an unindexed run's manifest and a stray file would be:
    listings skip them with a warning, verify names each as a problem, a read of one is one line."""
    store_run(store, "run-c", zoo[1], minutes_ago=5, decide=None)  # a run the history does not know
    root = Path(store.url)
    (root / "runs/run-c/manifest.json").unlink()
    fifos = ["registry/history/20990101T000000.000000Z-run-b.json", "runs/run-c/manifest.json", "runs/run-a/notes.txt"]
    for key in fifos:
        os.mkfifo(root / key)
    listing = cli(env, tmp_path, "runs", "--all", timeout=30)
    assert listing.code == 0 and "Traceback" not in listing.output and listing.seconds < 15
    assert [line.split("\t")[0] for line in listing.out.splitlines()[1:]] == ["run-c", "run-b", "run-a"]
    assert "warning: skipped runs/run-c/manifest.json: a FIFO, not a regular file" in listing.err
    assert listing.err.count("warning: skipped registry/history/20990101T000000.000000Z-run-b.json") == 1
    audit = cli(env, tmp_path, "verify", timeout=60)
    assert audit.code == 1 and "Traceback" not in audit.output and audit.seconds < 30
    for key in fifos:
        assert f"{key} in the store {store.url} is a FIFO, not a regular file; remove it" in audit.out, audit.out
    refused = cli(env, tmp_path, "promote", "run-c", timeout=30)
    assert refused.code == 1
    assert refused.one_error_line() == f"error: runs/run-c/manifest.json in the store {store.url} is a FIFO, " \
                                       "not a regular file; remove it (the pipeline writes only regular files)"


def test_a_fifo_in_a_local_mirror_folder_is_refused_at_once(tmp_path):
    from tasks.fetch import read_mirror

    os.mkfifo(tmp_path / "t10k-labels-idx1-ubyte.gz")
    started = time.monotonic()
    with pytest.raises(OSError, match="t10k-labels-idx1-ubyte.gz is a FIFO, not a regular file"):
        read_mirror(str(tmp_path), "t10k-labels-idx1-ubyte.gz")
    assert time.monotonic() - started < 1


# -- case 6: writes to a user's path -------------------------------------------------------------
def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:  # full
            pass


@pytest.mark.parametrize("command", [["model", "-o"], ["report", "run-a", "-o"]])
def test_a_full_disk_leaves_the_old_file_as_it_was_and_no_temporary_file(env, tmp_path, small_tmpfs, command):
    target = small_tmpfs / "old.bin"
    target.write_bytes(b"the user's earlier file")
    fill(small_tmpfs)
    before = sorted(os.listdir(small_tmpfs))
    child = cli(env, tmp_path, *command, str(target))
    assert child.code == 1
    assert child.one_error_line() == f"error: cannot write {target}: No space left on device; the existing file " \
                                     "is unchanged"
    assert target.read_bytes() == b"the user's earlier file" and sorted(os.listdir(small_tmpfs)) == before
    (small_tmpfs / "filler").unlink()
    saved = cli(env, tmp_path, *command, str(target))
    assert saved.code == 0 and target.read_bytes() == LocalStore(Path(env["MNIST_STORE_URL"]), create=False).get(
        "runs/run-a/model.keras" if command[0] == "model" else "runs/run-a/report.html")
    assert sorted(os.listdir(small_tmpfs)) == ["old.bin"]


def test_a_device_is_never_replaced_by_an_output(env, tmp_path):
    child = cli(env, tmp_path, "model", "-o", "/dev/null")
    assert child.code == 1 and Path("/dev/null").is_char_device()
    assert child.one_error_line() == "error: cannot write /dev/null: it is a character device, not a regular " \
                                     "file; give a file path"


# -- case 7: an interrupted run ------------------------------------------------------------------
def test_gc_collects_an_interrupted_run_and_verify_forgets_it(store, env, tmp_path, zoo):
    """run-x stopped three days ago (a model, no manifest); run-y is being written now."""
    root = Path(store.url)
    for run_id in ("run-x", "run-y"):
        store.put(f"runs/{run_id}/model.keras", zoo[0].data)
        store.put(f"runs/{run_id}/history.json", b"{}")
    three_days_ago = time.time() - 3 * 86400
    for path in (root / "runs/run-x").iterdir():
        os.utime(path, (three_days_ago, three_days_ago))
    before = cli(env, tmp_path, "verify")
    assert before.code == 1 and "Traceback" not in before.output
    assert before.out.splitlines() == ["runs/run-x/: an interrupted run (no manifest.json, no file written for "
                                       "3.0 days); `mnist-pipeline gc` deletes its files"]
    gc = cli(env, tmp_path, "gc", "--keep-last", "5")
    assert gc.code == 0 and "deleted runs/run-x/model.keras" in gc.out and "run-y" not in gc.out
    assert sorted(p.name for p in (root / "runs/run-x").iterdir()) == ["collected.json"]
    mark = json.loads(store.get("runs/run-x/collected.json"))
    assert set(mark["files"]) == {"runs/run-x/model.keras", "runs/run-x/history.json"}
    assert (root / "runs/run-y/model.keras").exists()  # it may still be running
    after = cli(env, tmp_path, "verify")
    assert after.code == 0 and after.out.startswith(f"ok: {store.url} is consistent"), after.output
    print(f"\nEDGES interrupted run: verify {before.seconds:.1f} s, gc {gc.seconds:.1f} s, verify {after.seconds:.1f} s")


def test_verify_finds_a_model_of_the_same_size_swapped_in_that_promote_would_refuse(store, env, tmp_path):
    """verify never calls consistent a store that promote would refuse: a run's model larger than
    the small files it hashes anyway (a real MLP is 1.3 MB), replaced by other bytes of its size."""
    from tests.fakes import ZooModel

    big = ZooModel(os.urandom(1_400_000), 0.9, np.zeros(10000, np.uint8))
    store_run(store, "run-c", big, minutes_ago=5)
    key = "runs/run-c/model.keras"
    store.put(key, os.urandom(len(big.data)))
    audit = cli(env, tmp_path, "verify")
    assert audit.code == 1 and "Traceback" not in audit.output
    assert any(line.startswith(f"{key}: SHA-256 ") for line in audit.out.splitlines()), audit.out
    refused = cli(env, tmp_path, "promote", "run-c")
    assert refused.code == 1 and key in refused.one_error_line()


# -- case 8: the dataset cache -------------------------------------------------------------------
def test_verify_checks_the_dataset_cache_and_the_others_name_the_cached_file(store, env, tmp_path):
    assert registry.promote(store, registry.stored_candidate(store, "run-b"), min_accuracy=0.5,
                            allow_regression=True).promoted  # so that rollback has somewhere to go
    key = keys.MNIST_CACHE + "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress(store.get(key)))
    labels[8] = (labels[8] + 1) % 10  # one test label changed, still a valid gzip of a valid IDX file
    store.put(key, gzip.compress(bytes(labels)))
    cached = f"t10k-labels-idx1-ubyte from the store's cache ({store.location(key)}) has SHA-256 "
    audit = cli(env, tmp_path, "verify")
    assert audit.code == 1 and "Traceback" not in audit.output
    assert len(audit.out.splitlines()) == 1 and audit.out.startswith(cached), audit.out
    for args in (["promote", "run-a"], ["rollback"], ["compare", "run-a", "run-b"]):
        child = cli(env, tmp_path, *args)
        line = child.one_error_line()
        assert child.code == 1 and line.startswith(f"error: {cached}") and "mirror" not in line, (args, line)
        assert line.endswith("not the official MNIST file; delete it: the next training run fetches the official "
                             "file again and caches it")
    assert registry.read_production(store)[0].run_id == "run-b"


# -- case 9: a predictions file whose header lies ------------------------------------------------
def test_a_predictions_header_claiming_37_gib_is_named_without_allocating_it(store, env, tmp_path):
    """1 KB whose .npy header claims 5e9 int64 predictions; its manifest record updated to match,
    so that only reading the header can tell."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (5_000_000_000,)})
    liar = buf.getvalue().ljust(1024, b"\0")
    key = "runs/run-b/predictions.npy"
    store.put(key, liar)
    manifest = json.loads(store.get("runs/run-b/manifest.json"))
    manifest["files"][key] = file_record(liar)
    store.put("runs/run-b/manifest.json", json.dumps(manifest).encode())
    named = f"{key} holds (5000000000,) of int64, not one integer prediction per test image (10,000)"
    compared = cli(env, tmp_path, "compare", "run-a", "run-b")
    assert compared.code == 1 and compared.one_error_line() == f"error: {named}"
    assert compared.peak_mb < 300 and compared.seconds < 20
    audit = cli(env, tmp_path, "verify")
    assert audit.code == 1 and "Traceback" not in audit.output and "MemoryError" not in audit.output
    assert audit.out.splitlines() == [named] and audit.seconds < 30
    print(f"\nEDGES lying .npy header: compare {compared.seconds:.1f} s, peak {compared.peak_mb:.0f} MB; "
          f"verify {audit.seconds:.1f} s")


# -- case 11: '..' in an S3 prefix ---------------------------------------------------------------
@pytest.mark.parametrize("url", ["s3://bucket/../../x", "s3://bucket/a//b", "s3://bucket/./runs", "s3://bucket/a/.."])
def test_dot_segments_and_empty_segments_in_an_s3_prefix_are_refused_in_one_line(url):
    from mnist_pipeline.errors import ConfigError
    from mnist_pipeline.settings import load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings(store_url=url)
    assert str(refused.value) == ("MNIST_STORE_URL is invalid: the prefix after the bucket must not have '.', '..' "
                                  "or empty ('a//b') segments: write s3://BUCKET/SOME/PREFIX; fix it in the "
                                  "environment")


@pytest.mark.parametrize("url", ["s3://bucket/q?token=TokQ999", "s3://bucket/f#frag", "s3://bucket/a%2Fb",
                                 "s3://bucket/a b", "s3://bucket/a\\b", "s3://bucket/a\nb"])
def test_url_characters_in_an_s3_prefix_are_refused_in_one_line_never_echoed(url):
    """`s3://bucket/q?token=X` was stored under the key prefix `q?token=X/`: hidden in logs as a
    query, printed whole in report links and stored in Prefect's database."""
    from mnist_pipeline.errors import ConfigError
    from mnist_pipeline.settings import load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings(store_url=url)
    line = str(refused.value)
    assert line.startswith("MNIST_STORE_URL is invalid: the prefix after the bucket must not hold '?', '#', '%'")
    assert "\n" not in line and "TokQ999" not in line and "frag" not in line


@pytest.mark.parametrize("url", ["s3://bucket/team/a", "s3://bucket/team/a/", "s3://bucket", "s3://bucket/team=a/x-1_(2)"])
def test_an_ordinary_s3_prefix_is_accepted(url):
    from mnist_pipeline.settings import load_settings

    assert load_settings(store_url=url).store_url == url


def test_the_flow_refuses_a_dotted_prefix_in_one_line_exit_2(tmp_path):
    env = dict(os.environ, MNIST_STORE_URL="s3://bucket/../../x", PREFECT_HOME=str(tmp_path / "prefect"))
    child = run_child([sys.executable, "flows/train_flow.py"], env, tmp_path)
    assert child.code == 2 and "../" not in child.output
    assert child.one_error_line().startswith("error: MNIST_STORE_URL is invalid: the prefix after the bucket")


# -- case 12: the flows' options; review commands never create a store ---------------------------
def test_a_bad_flow_option_is_one_line_naming_it_exit_2(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    child = run_child([sys.executable, "flows/train_flow.py", "--epochs", "abc"], env, tmp_path)
    assert child.code == 2 and child.out == "" and "usage:" not in child.err
    assert child.one_error_line() == "error: argument --epochs: invalid int value: 'abc' (see `train_flow.py --help`)"
    print(f"\nEDGES --epochs abc: {child.seconds:.1f} s")


@pytest.mark.parametrize("argv,variable,line", [
    (["--cron", "61 * * * *"], "MNIST_CRON",
     "error: the schedule is invalid (--cron / MNIST_CRON '61 * * * *', --timezone / MNIST_TIMEZONE 'UTC'): "),
    (["--timezone", "Mars/Olympus"], "MNIST_TIMEZONE",
     "error: the schedule is invalid (--cron / MNIST_CRON '0 2 * * *', --timezone / MNIST_TIMEZONE 'Mars/Olympus'): "),
    (["--parameters", "{bad"], "MNIST_DEPLOYMENT_PARAMETERS",
     "error: --parameters / MNIST_DEPLOYMENT_PARAMETERS is not JSON: "),
    (["--parameters", "[1]"], "MNIST_DEPLOYMENT_PARAMETERS",
     "error: --parameters / MNIST_DEPLOYMENT_PARAMETERS must be a JSON object of run parameters"),
])
def test_serve_refuses_a_bad_schedule_or_parameters_in_one_line_naming_option_and_variable(tmp_path, argv, variable, line):
    """The same refusal when the value comes from the environment, as in compose's worker."""
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_CRON", "MNIST_TIMEZONE", "MNIST_DEPLOYMENT_PARAMETERS")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL="http://127.0.0.1:9/api",
               MNIST_STORE_URL=str(tmp_path / "store"))
    for given in (argv, []):
        child = run_child([sys.executable, "deployments/serve.py", *given],
                          env if given else dict(env, **{variable: argv[1]}), tmp_path)
        assert child.code == 2 and child.one_error_line().startswith(line)
    assert not (tmp_path / "store").exists()


def test_serve_says_in_one_line_that_its_prefect_api_does_not_answer(tmp_path):
    """It printed two chained tracebacks (httpx.ConnectError) and exit 1."""
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), MNIST_STORE_URL=str(tmp_path / "store"),
               PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    child = run_child([sys.executable, "deployments/serve.py"], env, tmp_path)
    assert child.code == 1 and child.seconds < 30
    assert child.one_error_line().startswith(f"error: the Prefect API at {env['PREFECT_API_URL']} cannot be "
                                             "reached (ConnectError: ")


def test_serve_takes_an_empty_variable_for_unset(monkeypatch):
    """Compose passes `${MNIST_CRON:-}` and friends as "": the defaults, as for the settings."""
    from deployments import serve

    for name in ("MNIST_CRON", "MNIST_TIMEZONE", "MNIST_DEPLOYMENT_PARAMETERS"):
        monkeypatch.setenv(name, "")
    args = serve.build_parser().parse_args([])
    assert (args.cron, args.timezone, args.parameters) == (serve.DEFAULT_CRON, "UTC", "{}")


@pytest.mark.parametrize("module,argv,line", [
    ("train_flow", ["--batch-size", "1.5"], "error: argument --batch-size: invalid int value: '1.5'"),
    ("train_flow", ["--epohcs", "3"], "error: unrecognized arguments: --epohcs 3"),
    ("tune_flow", ["--trials", "many"], "error: argument --trials: invalid int value: 'many'"),
    ("tune_flow", ["--model"], "error: argument --model: expected one argument"),
])
def test_both_flows_parsers_say_one_line(capsys, module, argv, line):
    from mnist_pipeline.params import TrainParams, TuneParams, command_line

    parser = command_line(TrainParams if module == "train_flow" else TuneParams, "x")
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"{line} (see `{parser.prog} --help`)\n"


@pytest.mark.parametrize("args", [["runs"], ["history"], ["report", "run-a"], ["compare", "run-a", "run-b"],
                                  ["verify"], ["gc", "--keep-last", "1"], ["model"], ["predict", "x.png"],
                                  ["promote", "run-a"], ["rollback"]])
def test_no_command_creates_a_missing_store_folder(tmp_path, monkeypatch, capfd, args):
    from mnist_pipeline.cli import main

    missing = tmp_path / "mistyped-store"
    monkeypatch.setenv("MNIST_STORE_URL", str(missing))
    code = main(args)
    captured = capfd.readouterr()
    assert code == 1 and not missing.exists() and "Traceback" not in captured.out + captured.err
    assert captured.err == f"error: no store at {missing}: no such folder; check MNIST_STORE_URL (a training " \
                           "run creates the store)\n"



@pytest.mark.parametrize("args", [["runs"], ["history"], ["verify"], ["gc", "--keep-last", "1"], ["model"],
                                  ["rollback"], ["data"], ["dashboard"]])
def test_no_command_creates_a_missing_bucket(s3_env, tmp_path, monkeypatch, capfd, args):
    """As for a folder: a mistyped bucket was created, and then looked like an empty store."""
    import boto3
    from botocore.exceptions import ClientError

    from mnist_pipeline.cli import main

    monkeypatch.chdir(tmp_path)  # `model` and `dashboard` would write here
    code = main(args)
    captured = capfd.readouterr()
    url, bucket = s3_env["MNIST_STORE_URL"], s3_env["MNIST_STORE_URL"][len("s3://"):]
    assert code == 1 and "Traceback" not in captured.out + captured.err
    assert captured.err == f"error: no store at {url}: bucket {bucket!r} does not exist; check MNIST_STORE_URL " \
                           "(a training run creates the bucket)\n"
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(ClientError, match="404|NoSuchBucket|Not Found"):
        client.head_bucket(Bucket=bucket)

# -- case 13: Ctrl-C and SIGTERM, at any moment ----------------------------------------------------
def takes_signals_over(pid: int) -> bool:
    """Whether the console script's entry has taken the signals over: SIGTERM is caught (Python
    alone catches only SIGINT). From then on, imports included, stopping it is ours to say; before,
    Python is still starting (a signal then is Python's own: exit -2, or its start-up error)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def has_a_child_process(pid: int) -> bool:
    return bool(psutil.Process(pid).children())


def stopped(env: dict, tmp_path: Path, argv: list[str], at: float = 0.0, after=None, signum=signal.SIGINT) -> Child:
    """ARGV sent `signum` as a terminal's Ctrl-C sends it, to its process group, `at` seconds
    after it started, or after `after(pid)` holds (e.g. takes_signals_over)."""
    out_path, err_path = tmp_path / "stopped.out", tmp_path / "stopped.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=tmp_path, start_new_session=True)
        if after:
            wait_for(lambda: after(child.pid), 30, after.__name__, 0.001)
        time.sleep(at)
        assert child.poll() is None, f"{argv} ended before the signal ({after and after.__name__}, +{at} s)"
        os.killpg(child.pid, signum)
        code = child.wait(60)
    return Child(code, out_path.read_text(), err_path.read_text(), time.monotonic() - started, peak_mb=0.0)


def command_and_its_time(env: dict, tmp_path: Path, args: list[str]) -> tuple[list[str], float]:
    """ARGS (DIGIT: an image of a 7) and how long the command takes when nothing stops it
    (promote's measured on a promotion that changes nothing: run-a is production already)."""
    from tests.digit_images import png, render_digit

    digit = tmp_path / "seven.png"
    digit.write_bytes(png(render_digit(7, np.random.default_rng(0))))
    args = [str(digit) if a == "DIGIT" else a for a in args]
    whole = cli(env, tmp_path, *(["promote", "run-a"] if args[0] == "promote" else args))
    assert whole.code == 0, whole.output
    return args, whole.seconds


@pytest.mark.parametrize("args", [["runs"], ["verify"], ["predict", "DIGIT"], ["promote", "run-b", "--allow-regression"]])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130_production_unchanged(store, env, tmp_path, args):
    """Before: during the imports (the first second) a 13-30 line KeyboardInterrupt traceback, exit
    -2; while predict loaded TensorFlow, exit 130 and nothing said. Moments: as soon as the entry
    has the signals, then fractions of the command's own time."""
    args, seconds = command_and_its_time(env, tmp_path, args)
    production = store.get("registry/production.json")
    for after, at in ((takes_signals_over, 0), (None, 0.1 * seconds), (None, 0.25 * seconds), (None, 0.45 * seconds)):
        child = stopped(env, tmp_path, [CLI, *args], at, after)
        assert (child.code, child.one_error_line(), child.out) == \
            (130, "error: interrupted by SIGINT; production unchanged", ""), (at, child.output)
        assert store.get("registry/production.json") == production
    print(f"\nEDGES Ctrl-C {args[0]}: stopped at 0 (entry), 10, 25, 45 % of {seconds:.1f} s")


@pytest.mark.parametrize("args", [["runs"], ["predict", "DIGIT"]])
def test_sigterm_is_one_line_and_exit_143(store, env, tmp_path, args):
    args, seconds = command_and_its_time(env, tmp_path, args)
    for after, at in ((takes_signals_over, 0), (None, 0.25 * seconds)):
        child = stopped(env, tmp_path, [CLI, *args], at, after, signal.SIGTERM)
        assert (child.code, child.one_error_line(), child.out) == \
            (143, "error: interrupted by SIGTERM; production unchanged", ""), (at, child.output)


INGEST_WITH_A_POOL = """import sys
import mnist_pipeline.ingest as i
i.POOL_FROM_IMAGES = 0  # a pool however few the images
sys.argv = ["mnist-pipeline", "ingest", sys.argv[1]]
from mnist_pipeline.cli import run
run()
"""


def test_ctrl_c_while_ingest_starts_its_workers_is_one_line_and_stores_nothing(store, env, tmp_path):
    """A terminal's Ctrl-C reaches the pool's workers too. Before: each worker still starting
    printed its own KeyboardInterrupt traceback, and the resource tracker its leaked semaphores
    (40-80 lines)."""
    from tests.digit_images import write_folder

    folder = write_folder(tmp_path / "digits", 60)
    for at in (0.0, 0.05, 0.15):
        child = stopped(env, tmp_path, [sys.executable, "-c", INGEST_WITH_A_POOL, str(folder)], at, has_a_child_process)
        assert (child.code, child.one_error_line(), child.out) == \
            (130, "error: interrupted by SIGINT; production unchanged", ""), (at, child.output)
        assert data_versions.list_versions(store) == []


SLOW_VERIFY = """import sys, time
from pathlib import Path
from mnist_pipeline import audit
check_run = audit.check_run
def slowly(*args, **kwargs):  # a large S3 store's reads, queued in verify's thread pool
    Path("reading").touch()
    time.sleep(30)
    return check_run(*args, **kwargs)
audit.check_run = slowly
sys.argv = ["mnist-pipeline", "verify"]
from mnist_pipeline.cli import run
run()
"""


def test_ctrl_c_while_verify_waits_for_its_thread_pool_ends_it_within_seconds(store, env, tmp_path):
    """Unwinding waits for a thread pool to finish its queue: the process ends in one line anyway,
    a grace of seconds later (interrupts.GRACE_S), not once every read is done."""
    child = stopped(env, tmp_path, [sys.executable, "-c", SLOW_VERIFY], 0.2,
                    lambda pid: (tmp_path / "reading").exists())
    assert (child.code, child.one_error_line()) == (130, "error: interrupted by SIGINT; production unchanged")
    assert child.seconds < 20, child.seconds

# The signal's exception raised where Python turns it into another, or drops it.
DISGUISED = """import os, signal, sys, time
import mnist_pipeline.store as store
open_store, where = store.open_store, sys.argv[1]
class Named:
    def __set_name__(self, owner, name):  # Python 3.11 wraps what this raises in a RuntimeError
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000): pass
class Finalised:
    def __del__(self):  # what this raises is dropped, with an "Exception ignored" traceback
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000): pass
def interrupted(*args, **kwargs):
    if where == "__set_name__":
        type("Owner", (), {"attribute": Named()})
    else:
        Finalised()
        time.sleep(10)  # the command would go on
    return open_store(*args, **kwargs)
store.open_store = interrupted
sys.argv = ["mnist-pipeline", "runs"]
from mnist_pipeline.cli import run
run()
"""


@pytest.mark.parametrize("where", ["__set_name__", "__del__"])
def test_an_interruption_python_wraps_or_drops_is_still_one_line_and_exit_130(store, env, tmp_path, where):
    """Before: "error: unexpected RuntimeError: Error calling __set_name__ ...", exit 1 (seen
    during the imports); an "Exception ignored" traceback, and the command went on."""
    child = run_child([sys.executable, "-c", DISGUISED, where], env, tmp_path)
    assert (child.code, child.one_error_line(), child.out) == \
        (130, "error: interrupted by SIGINT; production unchanged", ""), child.output
    assert child.seconds < 8, child.seconds  # the dropped one: the watch's grace, not the 10 s

# Ctrl-C exactly as a write begins: registry.promote or retention.collect sends it to its own process.
SIGNAL_AS_THE_WRITE_BEGINS = """import os, signal, sys
from mnist_pipeline import registry, retention
module, name = {"promote": (registry, "promote"), "gc": (retention, "collect")}[sys.argv[1]]
write = getattr(module, name)
def signalled(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return write(*args, **kwargs)
setattr(module, name, signalled)
sys.argv = ["mnist-pipeline", *sys.argv[1:]]
from mnist_pipeline.cli import run
run()
"""


@pytest.mark.parametrize("args", [["promote", "run-b", "--allow-regression"], ["gc", "--keep-last", "1"]])
def test_ctrl_c_during_a_write_waits_for_it_whole_and_the_exit_status_says_the_change(store, env, tmp_path, zoo,
                                                                                      args):
    """The write finishes (production.json and its history record; gc's marks and deletions), the
    decision is said, then a warning of what may be missing; exit 0: production did change."""
    store_run(store, "run-0", zoo[1], minutes_ago=30)  # older than both: gc collects it
    child = run_child([sys.executable, "-c", SIGNAL_AS_THE_WRITE_BEGINS, *args], env, tmp_path)
    assert child.code == 0 and "Traceback" not in child.output, child.output
    assert child.err.splitlines() == ["warning: interrupted by SIGINT after the change was made: the store's "
                                      "index.html may not show it yet"], child.output
    if args[0] == "promote":
        assert child.out.startswith("promoted: run-b is in production (")
        assert json.loads(store.get("registry/production.json"))["run_id"] == "run-b"
        last = registry.read_history(store)[-1]  # its history record, written too
        assert (last["decision"], last["run_id"]) == ("promoted", "run-b")
    else:
        assert "deleted runs/run-0/model.keras" in child.out
        assert re.fullmatch(r"deleted \d+ files of 1 runs, .* MB freed", child.out.splitlines()[-1]), child.out
    audit = cli(env, tmp_path, "verify")
    assert audit.code == 0 and audit.out.startswith("ok: "), audit.output
