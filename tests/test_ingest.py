"""`mnist-pipeline ingest` and `data` as a user runs them, on a folder store and on moto S3: digit
images that are not MNIST's (rendered with fonts, distorted: tests/digit_images.py) become an
immutable dataset version; bad input is one line each and nothing is half-stored; a kill leaves no
version; two ingests at once become two versions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from mnist_pipeline import data_versions, keys
from mnist_pipeline.cli import main
from mnist_pipeline.digits import load_digit
from tests.conftest import REPO
from tests.digit_images import write_folder
from tests.test_cli import CLI, Result
from tests.test_edges_files import bomb_png

PER_DIGIT = 12


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def env(store) -> dict:
    """The environment of an `mnist-pipeline` process on the store (no Prefect API: no event)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return dict(env, MNIST_STORE_URL=store.url)


@pytest.fixture
def cli(env, monkeypatch, capfd):
    """`mnist-pipeline ARGS` in this process; no traceback, ever."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    def invoke(*args: str) -> Result:
        capfd.readouterr()
        code = main(list(args))
        captured = capfd.readouterr()
        assert "Traceback" not in captured.out + captured.err, captured.out + captured.err
        return Result(code, captured.out, captured.err)
    return invoke


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """12 rendered images of each digit: none of them MNIST's."""
    return write_folder(tmp_path_factory.mktemp("digits"), PER_DIGIT, seed=1)


def ingested_keys(store) -> list[str]:
    return store.list(keys.INGESTED)


def test_a_folder_of_digit_images_becomes_version_1_as_predict_prepares_them(cli, store, digits):
    result = cli("ingest", str(digits), "--note", "rendered DejaVu digits")
    assert result.code == 0 and result.err == ""
    assert result.out.splitlines() == [f"data version 1: 120 images from {digits} (100 to train on, 20 held out)"]
    (version,) = data_versions.list_versions(store)
    assert version.counts.train == [10] * 10 and version.counts.holdout == [2] * 10  # 20% of each digit
    assert version.note == "rendered DejaVu digits" and version.source == str(digits) and "@" in version.created_by
    rows = data_versions.load(store, version)
    prepared = {np.rint(load_digit(p) * 255).astype(np.uint8).tobytes(): d
                for d in range(10) for p in sorted((digits / str(d)).iterdir())}
    assert {r["image"].tobytes(): int(r["label"]) for r in rows} == prepared  # each image, as predict sees it
    listing = cli("data")
    assert listing.code == 0 and listing.out.splitlines()[1].split("\t")[2:7] == ["100", "20", "0", version.created_by,
                                                                                   "rendered DejaVu digits"]
    assert json.loads(cli("data", "--json").out)[0]["images"]["sha256"] == version.images.sha256


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_note_naming_a_secret_url_is_stored_and_shown_redacted(cli, store, digits):
    """Found by an audit: a --note was stored verbatim in the version's manifest."""
    assert cli("ingest", str(digits), "--note", "from https://ingu:INGSECRET@host/x?token=TOK123").code == 0
    (version,) = data_versions.list_versions(store)
    assert version.note == "from https://***@host/x?token=***"
    shown = cli("data").output + cli("data", "--json").output
    stored = b"".join(path.read_bytes() for path in store.root.rglob("*.json"))
    assert "host/x?token=***" in shown and not [word for word in ("INGSECRET", "TOK123")
                                                if word in shown or word.encode() in stored]


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("given,shown", [("https://u:PASS3@host/x.csv", "https:/***@host/x.csv"),
                                         ("s3://KEY:PASS4@bucket/x", "s3:/***@bucket/x")])
def test_a_url_given_for_the_input_names_no_password_in_its_error(cli, store, given, shown):
    """Found by an audit: the path's normalisation collapsed its `//`, which redaction missed."""
    result = cli("ingest", given)
    assert result.code == 1 and result.err.startswith(f"error: {shown}: no such file") and "PASS" not in result.output


def test_a_csv_of_path_and_label_is_ingested_and_a_bad_row_is_one_line(cli, store, digits, tmp_path):
    lines = ["path,label"] + [f"{digits}/{d}/{p.name},{d}" for d in range(10) for p in sorted((digits / str(d)).iterdir())[:3]]
    shutil.copy(digits / "4" / sorted(os.listdir(digits / "4"))[5], tmp_path / "four.png")
    (tmp_path / "list.csv").write_text("\n".join(lines + ["four.png,4", "four.png,seven", "only-a-path.png"]) + "\n")
    result = cli("ingest", str(tmp_path / "list.csv"), "--holdout", "0")
    assert result.code == 0
    assert result.err.splitlines() == [f"skipped: {tmp_path / 'list.csv'} line 33: not `path,label` with a label 0-9",
                                       f"skipped: {tmp_path / 'list.csv'} line 34: not `path,label` with a label 0-9"]
    (version,) = data_versions.list_versions(store)
    assert version.counts.train == [3, 3, 3, 3, 4, 3, 3, 3, 3, 3] and version.holdout_images == 0


def test_a_csv_row_with_a_nul_byte_is_skipped_in_one_line_and_the_rest_is_stored(cli, store, digits, tmp_path):
    """It ended the whole ingest: `unexpected ValueError: embedded null byte`, nothing stored."""
    good = sorted((digits / "0").iterdir())[0]
    (tmp_path / "nul.csv").write_bytes(f"{good},0\n\0,1\n{good}\0x,0\n".encode())
    result = cli("ingest", str(tmp_path / "nul.csv"), "--holdout", "0")
    assert result.code == 0 and result.err.splitlines() == [
        f"skipped: {tmp_path}/\\x00 cannot be a file name: it holds a NUL byte",
        f"skipped: {good}\\x00x cannot be a file name: it holds a NUL byte"]
    assert data_versions.list_versions(store)[0].total == 1


def test_bad_input_is_one_line_each_and_the_rest_is_stored(cli, store, digits, tmp_path):
    """Unreadable, blank, 1x1, a decompression bomb, a FIFO, a non-digit folder, a stray file,
    duplicates within the folder and a label conflict: one line each naming it; the good images
    are stored, and the manifest counts what was left out."""
    folder = tmp_path / "mixed"
    shutil.copytree(digits, folder)
    bad = {"garbage": folder / "3" / "garbage.png", "blank": folder / "5" / "blank.png",
           "tiny": folder / "1" / "tiny.png", "bomb": folder / "8" / "bomb.png", "fifo": folder / "2" / "pipe.png",
           "stray": folder / "notes.txt", "cats": folder / "cats"}
    bad["garbage"].write_bytes(b"not an image at all")
    Image.new("L", (64, 64), 240).save(bad["blank"])
    Image.new("L", (1, 1), 0).save(bad["tiny"])
    bomb_png(bad["bomb"], 20_000, 1, 0)
    os.mkfifo(bad["fifo"])
    bad["stray"].write_text("hello")
    bad["cats"].mkdir()
    Image.new("L", (64, 64), 0).save(bad["cats"] / "cat.png")
    sevens = sorted((folder / "7").iterdir())
    shutil.copy(sevens[0], folder / "7" / "zz-again.png")  # the same image twice, same label
    shutil.copy(sevens[1], folder / "1" / "zz-a-seven.png")  # the same image, another label
    started = time.monotonic()
    result = cli("ingest", str(folder))
    assert result.code == 0 and time.monotonic() - started < 20  # the FIFO was never waited on
    lines = result.err.splitlines()
    expected = {"garbage": "is not an image Pillow can read", "blank": "is blank: no digit found",
                "tiny": "is 1 x 1 pixels, too small to hold a digit", "bomb": "more than the 16,000,000 pixels",
                "fifo": "is a FIFO, not a regular file", "stray": "not in a digit folder",
                "cats": "not a digit folder (0/ ... 9/); its files are not ingested"}
    for what, needle in expected.items():
        assert [line for line in lines if str(bad[what]) in line and needle in line], (what, lines)
    assert [line for line in lines if line.startswith(f"skipped: {folder / '7' / 'zz-again.png'}: a duplicate of ")]
    conflicts = [line for line in lines if "the same prepared pixels are labelled otherwise" in line]
    assert len(conflicts) == 2 and "zz-a-seven.png: labelled 1, but" in conflicts[0] + conflicts[1]
    assert len(lines) == len(expected) + 3 and all(line.startswith("skipped: ") for line in lines)
    (version,) = data_versions.list_versions(store)  # neither of the conflicting two: no telling which is right
    assert version.total == 10 * PER_DIGIT - 1 and version.skipped == {"bad": 7, "duplicates": 1,
                                                                        "conflicting labels": 2}
    assert result.out.startswith(f"data version 1: 119 images from {folder} ") and result.out.rstrip().endswith(
        "; 10 skipped")


def test_strict_refuses_the_whole_folder_and_stores_nothing(cli, store, digits, tmp_path):
    folder = tmp_path / "one-bad"
    shutil.copytree(digits, folder)
    (folder / "6" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = cli("ingest", str(folder), "--strict")
    assert result.code == 1
    assert result.err.splitlines() == [
        f"skipped: {folder / '6' / 'broken.jpg'} is not an image Pillow can read (give a PNG or JPEG)",
        f"error: --strict: 1 bad file(s) or entries in {folder} (one line each above); nothing was stored"]
    assert ingested_keys(store) == []


@pytest.mark.parametrize("make, message", [
    ("empty", "holds no images; give a folder with one subfolder per digit"),
    ("empty digit folders", "holds no images; give a folder with one subfolder per digit"),
    ("nothing usable", "no usable image in"),
    ("missing", "no such file or folder"),
])
def test_an_input_with_nothing_to_store_is_one_line_exit_1_and_stores_nothing(cli, store, tmp_path, make, message):
    folder = tmp_path / "input"
    if make != "missing":
        folder.mkdir()
    if make == "empty digit folders":
        for d in range(10):
            (folder / str(d)).mkdir()
    if make == "nothing usable":
        (folder / "0").mkdir()
        (folder / "0" / "a.png").write_bytes(b"junk")
    result = cli("ingest", str(folder))
    assert result.code == 1 and result.out == ""
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and str(folder) in errors[0]
    assert ingested_keys(store) == []


def test_images_already_stored_are_skipped_and_only_new_ones_make_a_version(cli, store, digits, tmp_path):
    assert cli("ingest", str(digits)).code == 0
    again = cli("ingest", str(digits))
    assert again.code == 1 and again.err.splitlines()[-1] == (
        f"error: nothing new in {digits}: every usable image is already stored or labelled otherwise "
        "(120 duplicates, 0 conflicts); nothing was stored")
    more = write_folder(tmp_path / "more", 3, seed=2)
    for d in range(10):
        shutil.copy(sorted((digits / str(d)).iterdir())[0], more / str(d) / "old.png")
    result = cli("ingest", str(more))
    assert result.code == 0 and result.out.startswith(f"data version 2: 30 images from {more} ")
    assert sum("old.png: a duplicate of an image in data version 1" in line for line in result.err.splitlines()) == 10
    assert [v.total for v in data_versions.list_versions(store)] == [120, 30]


def ingest_child(env: dict, path: Path, prelude: str = "") -> subprocess.Popen:
    """`mnist-pipeline ingest PATH` in a process of its own (with `prelude` run first)."""
    code = f"{prelude}\nimport sys\nfrom mnist_pipeline.cli import main\nsys.exit(main(['ingest', {str(path)!r}]))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_ingests_at_once_become_two_whole_versions(env, store, digits, tmp_path):
    other = write_folder(tmp_path / "other", 5, seed=3)
    children = [ingest_child(env, digits), ingest_child(env, other)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    versions = data_versions.list_versions(store)
    assert [v.version for v in versions] == [1, 2]
    assert sorted(v.total for v in versions) == [50, 120]
    for v in versions:
        assert data_versions.load(store, v)["label"].size == v.total


def test_an_ingest_that_lost_the_race_for_its_number_takes_the_next(cli, store, digits, tmp_path, monkeypatch):
    """The listing said 1 was free; meanwhile another ingest created version 1: the conditional
    create is refused, and this ingest decides again (deduplicating against version 1 too)."""
    assert cli("ingest", str(write_folder(tmp_path / "first", 2, seed=4))).code == 0
    real, calls = data_versions.list_versions, []

    def stale_once(store):
        calls.append(1)
        return [] if len(calls) == 1 else real(store)
    monkeypatch.setattr(data_versions, "list_versions", stale_once)
    result = cli("ingest", str(digits))
    assert result.code == 0 and result.out.startswith("data version 2: 120 images") and len(calls) == 2
    monkeypatch.undo()
    assert [v.version for v in data_versions.list_versions(store)] == [1, 2]


def test_a_kill_between_the_images_and_the_manifest_leaves_no_version(env, store, digits, cli, monkeypatch):
    """The process dies right after storing the images (the manifest's create is never sent): no
    version; `verify` names the orphaned images once they are an hour old, and `gc` deletes them."""
    dies = ("from mnist_pipeline import store\nimport os\n"
            "def die(*a, **k): os._exit(9)\n"
            "store.LocalStore.put_if_absent = store.S3Store.put_if_absent = die")
    child = ingest_child(env, digits, dies)
    child.communicate(timeout=120)
    assert child.returncode == 9
    (orphan,) = ingested_keys(store)
    assert keys.is_data_images(orphan) and data_versions.list_versions(store) == []
    assert cli("data").out.startswith("no dataset version in")
    assert cli("verify").code == 0  # an hour's grace: an ingest may still be writing its manifest
    monkeypatch.setattr(data_versions, "ORPHAN_AFTER", data_versions.ORPHAN_AFTER * 0)
    audit = cli("verify")
    assert audit.code == 1 and audit.out.splitlines() == [
        f"{orphan}: images no dataset version names (an ingest that died); `mnist-pipeline gc` deletes them"]
    assert f"would delete {orphan} " in cli("gc", "--keep-last", "1", "--dry-run").out
    assert f"deleted {orphan} " in cli("gc", "--keep-last", "1").out
    assert ingested_keys(store) == [] and cli("verify").code == 0
    assert cli("ingest", str(digits)).out.startswith("data version 1: 120 images")


def test_sigkill_while_preparing_stores_nothing_and_leaves_no_worker_behind(env, store, tmp_path):
    """Killed while its pool prepares 3,000 images: nothing under datasets/ingested/, and the
    pool's processes end with it."""
    folder = write_folder(tmp_path / "many", 300, seed=5)
    child = ingest_child(env, folder, "import mnist_pipeline.ingest as i\ni.POOL_FROM_IMAGES = 0  # a pool however few")
    parent = psutil.Process(child.pid)
    workers = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [p for p in parent.children(recursive=True) if p.is_running()]
        time.sleep(0.05)
    assert workers, "the pool never started"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == []
    assert ingested_keys(store) == [] and data_versions.list_versions(store) == []


def test_an_unreachable_prefect_api_is_a_warning_and_the_version_stays(env, digits, tmp_path):
    """Bounded: MNIST_DEADLINE_S. Exit 0: the version is stored."""
    from tests.conftest import free_port

    env = dict(env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api", MNIST_DEADLINE_S="3")
    started = time.monotonic()
    proc = subprocess.run([CLI, "ingest", str(digits)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stdout.startswith("data version 1: 120 images")
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "the mnist.data.ingested event was not delivered" in warning[0]
    assert time.monotonic() - started < 30
