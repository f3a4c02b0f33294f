"""`mnist-pipeline` against moto S3 and the folder store, in-process through its real entry point
(`main`, what the console script runs), output captured at the file-descriptor level. Runs are
stored the way the flow stores them (tests/fakes.py); tests/test_train_flow.py covers real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline import keys, registry
from mnist_pipeline.cli import main
from tests.fakes import cache_test_set, model_zoo, read_idx, store_run

CLI = str(Path(sys.executable).parent / "mnist-pipeline")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


@pytest.fixture(scope="session")
def zoo(mnist_mirror):
    return model_zoo(mnist_mirror)


@pytest.fixture
def cli(store, monkeypatch, capfd):
    """Run `mnist-pipeline ARGS` in-process against the parametrised store (folder or moto S3)."""
    if not store.url.startswith("s3://"):  # the s3 store's fixture has set the S3 environment
        monkeypatch.setenv("MNIST_STORE_URL", store.url)
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.5")  # the zoo's models score 0.18-0.82

    def invoke(*args: str) -> Result:
        capfd.readouterr()
        code = main(list(args))
        captured = capfd.readouterr()
        assert "Traceback" not in captured.out + captured.err, captured.out + captured.err
        return Result(code, captured.out, captured.err)
    return invoke


@pytest.fixture
def runs(store, zoo, mnist_mirror):
    """Runs a (best, ~0.82) .. d (~0.18), a the oldest; the test set cached as the flow leaves it."""
    cache_test_set(store, mnist_mirror)
    for i, name in enumerate("abcd"):
        store_run(store, f"run-{name}", zoo[i], minutes_ago=40 - 10 * i, model="cnn" if name == "c" else "mlp")
    return store


def error_line(result: Result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    return lines[0]


# -- review -------------------------------------------------------------------------------------
def test_runs_newest_first_full_ids_iso_times_and_production(runs, cli):
    assert cli("promote", "run-a").code == 0
    table = cli("runs")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split("\t") == ["run id", "started (UTC)", "model", "epochs", "test acc", "gate", "prod",
                                    "new data (prod before)"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["run-d", "run-c", "run-b", "run-a"]  # full ids when piped
    assert rows[-1][6] == "*" and rows[1][2] == "cnn"
    assert all(len(r[1]) == 20 and r[1].endswith("Z") and r[1][10] == "T" for r in rows)  # ISO
    data = json.loads(cli("runs", "--json").out)
    assert [r["run_id"] for r in data] == ["run-d", "run-c", "run-b", "run-a"] and data[-1]["production"]


def test_runs_and_history_show_the_newest_page(store, zoo, cli, mnist_mirror):
    for i in range(25):
        store_run(store, f"r{i:02d}", zoo[0], minutes_ago=100 - i)
    page = cli("runs")
    assert [line.split("\t")[0] for line in page.out.splitlines()[1:]] == [f"r{i:02d}" for i in range(24, 4, -1)]
    assert "showing the newest 20 runs that reached a decision; --limit N for more, --all for every run" in page.err
    assert len(cli("runs", "--limit", "3").out.splitlines()) == 4
    store_run(store, "interrupted", zoo[1], minutes_ago=1, decide=None)
    assert "interrupted" not in cli("runs").out  # the default page: runs that reached a decision
    every = cli("runs", "--all").out.splitlines()
    assert len(every) == 27 and every[1].startswith("interrupted\t") and every[1].split("\t")[5] == "blocked"
    history = cli("history", "-n", "5")
    assert [line.split("\t")[2] for line in history.out.splitlines()[1:]] == [f"r{i:02d}" for i in range(24, 19, -1)]
    assert history.out.splitlines()[1].split("\t")[0].endswith("Z")
    assert "showing the newest 5 decisions" in history.err
    assert len(json.loads(cli("history", "--all", "--json").out)) == 25


def test_a_run_the_history_does_not_know_still_shows_and_foreign_folders_are_skipped(runs, zoo, cli):
    """--all lists every run folder: a run restored from a backup without its history shows."""
    store_run(runs, "restored", zoo[1], minutes_ago=5, decide=None)
    if runs.url.startswith("s3://"):
        runs.put("runs/empty-marker/", b"")  # what an S3 console's "create folder" writes
    else:
        (Path(runs.url) / "runs" / "empty-marker").mkdir()
    assert "some runs did not reach a decision" in cli("runs").err
    result = cli("runs", "--all")
    ids = [line.split("\t")[0] for line in result.out.splitlines()[1:]]
    assert ids[0] == "restored" and "empty-marker" not in ids
    assert "warning: skipped runs/empty-marker/: no run files in it" in result.err


def test_report_saves_into_a_folder_or_refuses_a_missing_one_in_one_line(runs, cli, tmp_path, monkeypatch):
    saved = cli("report", "run-b", "-o", str(tmp_path))
    assert saved.code == 0 and (tmp_path / "report-run-b.html").read_bytes() == b"<html>report of run-b</html>"
    missing = cli("report", "run-b", "-o", str(tmp_path / "no" / "such" / "r.html"))
    assert missing.code == 1 and error_line(missing) == \
        f"error: cannot write {tmp_path}/no/such/r.html: the folder {tmp_path}/no/such does not exist"
    monkeypatch.setenv("BROWSER", str(tmp_path / "no-browser-here"))
    opened = cli("report", "run-b", "-o", str(tmp_path / "r.html"), "--open")
    assert opened.code == 0 and f"no browser could be opened here; the report is at {tmp_path}/r.html" in opened.err


def test_an_output_ending_in_a_slash_names_a_folder_that_must_exist(runs, cli, tmp_path):
    """`-o DIR/`: into DIR when it is a folder, refused in one line when it is not (it was
    written as a file named DIR, exit 0)."""
    assert cli("promote", "run-a").code == 0
    (tmp_path / "a-file").write_text("the user's")
    for args, name in ((["report", "run-b"], "report-run-b.html"), (["model"], "model-run-a.keras"),
                       (["dashboard"], "dashboard.html")):
        missing = cli(*args, "-o", f"{tmp_path}/missing/")
        assert missing.code == 1 and error_line(missing) == \
            f"error: cannot write {tmp_path}/missing/{name}: the folder {tmp_path}/missing does not exist", args
        not_a_folder = cli(*args, "-o", f"{tmp_path}/a-file/")
        assert not_a_folder.code == 1 and error_line(not_a_folder) == \
            f"error: cannot write {tmp_path}/a-file/{name}: {tmp_path}/a-file is not a folder", args
        assert not (tmp_path / "missing").exists() and (tmp_path / "a-file").read_text() == "the user's"
        saved = cli(*args, "-o", f"{tmp_path}/")
        assert saved.code == 0 and (tmp_path / name).is_file(), (args, saved.output)


def test_the_json_listings_of_an_empty_store_are_empty_lists(store, cli):
    """A script tells an empty store from a failure: `[]`, exit 0, as `history` and `data` do."""
    for args in (["runs", "--json"], ["runs", "--all", "--json"], ["history", "--json"], ["data", "--json"]):
        listing = cli(*args)
        assert (listing.code, json.loads(listing.out), listing.err) == (0, [], ""), args
    table = cli("runs")  # a person reading a table is told why it is empty, and what to do
    assert table.code == 1 and error_line(table) == \
        f"error: no runs in {store.url} yet; run `python flows/train_flow.py` first"


def test_a_missing_file_of_a_run_says_why_it_is_missing(runs, cli, store):
    """A finished run's deleted report was "the run did not finish"; what gc collected, and what
    a run that died never wrote, are told apart from it."""
    store.delete(keys.report("run-b"))
    deleted = cli("report", "run-b")
    assert deleted.code == 1 and error_line(deleted) == "error: run run-b has no report.html: the run finished, " \
        "so it was deleted since; `mnist-pipeline verify` audits the store"
    store.put(keys.collected("run-b"), b"not json")  # a damaged gc mark: verify names it; report explains
    assert error_line(cli("report", "run-b")) == error_line(deleted)
    store.delete(keys.collected("run-b"))
    store.delete(keys.report("run-c"))
    store.delete(keys.manifest("run-c"))
    unfinished = cli("report", "run-c")
    assert unfinished.code == 1 and error_line(unfinished) == "error: run run-c has no report.html: the run did not finish"
    assert cli("promote", "run-a").code == 0 and cli("gc", "--keep-last", "1").code == 0
    collected = cli("compare", "run-d", "run-b")  # gc kept the newest, run-d
    assert collected.code == 1 and error_line(collected) == "error: run run-b has no stored predictions " \
        f"({keys.predictions('run-b')}): `mnist-pipeline gc` collected it"


def test_compare_marks_differences_with_deltas_and_mcnemar(runs, cli, zoo, mnist_mirror):
    result = cli("compare", "run-a", "run-d")
    assert result.code == 0, result.err
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in result.out.splitlines()[1:-1]}
    a, d = zoo[0].accuracy, zoo[3].accuracy
    assert rows["test accuracy"] == [f"{a:.4f}", f"{d:.4f}", f"{d - a:+.4f}"]
    assert rows["model"] == ["mlp", "mlp", ""] and rows["threshold applied"] == ["0.9700", "0.9700", ""]
    y = read_idx(mnist_mirror, "t10k-labels-idx1-ubyte", 8)
    only_a = int(np.sum((zoo[0].predictions == y) & (zoo[3].predictions != y)))
    assert f"right only by run-a: {only_a};" in result.out.splitlines()[-1]


# -- manage ---------------------------------------------------------------------------------------
def test_promote_blocked_rollback_and_its_threshold(runs, cli, zoo):
    assert cli("promote", "run-b", "--reason", "first").code == 0
    blocked = cli("promote", "run-d")
    assert blocked.code == 3 and error_line(blocked) == f"promotion blocked: {zoo[3].accuracy:.4f} < 0.5000"
    assert cli("promote", "run-a").code == 0
    strict = cli("rollback", "--min-accuracy", "0.99")
    assert strict.code == 3 and error_line(strict).startswith("rollback blocked: run-b scores 0.8")
    back = cli("rollback", "--reason", "a misbehaves")
    assert back.code == 0 and back.out.startswith("rolled back: run-b is in production")
    again = cli("rollback")
    assert again.code == 1 and "no earlier production model" in error_line(again)
    last = registry.read_history(runs)[-1]
    assert last["decision"] == "rollback" and last["note"] == "a misbehaves"


# The noise is the process's, not the backend's: the local store's variant is in `make test-all`.
@pytest.mark.parametrize("store", [pytest.param("local", marks=pytest.mark.slow), "s3"], indirect=True)
def test_promote_and_rollback_print_no_tensorflow_noise(runs, store, zoo, cli):
    """The console script for real: TensorFlow's start-up lines (written below Python) are hidden."""
    assert cli("promote", "run-a").code == 0  # in-process: something to roll back to
    env = dict(os.environ, MNIST_MIN_ACCURACY="0.5")
    env.setdefault("MNIST_STORE_URL", store.url)
    for args in (["promote", "run-b"], ["rollback"]):  # each start imports TensorFlow (~7 s)
        proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "" and len(proc.stdout.splitlines()) == 1, proc.stdout + proc.stderr


def test_the_per_digit_gate_blocks_a_promotion_naming_the_digits_and_their_recall(runs, cli, zoo, mnist_mirror,
                                                                                   monkeypatch):
    """MNIST_MIN_CLASS_RECALL applies to `promote` as to the flow, on each digit's recall measured
    again from the stored model; --min-class-recall overrides it."""
    labels = read_idx(mnist_mirror, "t10k-labels-idx1-ubyte", 8)
    recall = {d: round(float((zoo[0].predictions[labels == d] == d).mean()), 5) for d in range(10)}
    gate = sorted(recall.values())[3]
    below = [d for d in range(10) if recall[d] < gate]
    assert below  # the zoo's best model is below it on some digits, above on others
    monkeypatch.setenv("MNIST_MIN_CLASS_RECALL", str(gate))
    blocked = cli("promote", "run-a")
    named = ", ".join(f"{d} ({recall[d]:.4f})" for d in below)
    assert blocked.code == 3, blocked.output
    assert error_line(blocked) == (f"promotion blocked: per-digit gate: recall of digit{'s' if len(below) > 1 else ''} "
                                   f"{named} < {gate:.4f}")
    assert registry.read_production(runs)[0] is None
    assert registry.read_history(runs)[-1]["reason"] == error_line(blocked)
    assert cli("promote", "run-a", "--min-class-recall", "0").code == 0


def test_the_new_data_gate_measures_the_model_on_its_runs_holdout_images(runs, cli, zoo, tmp_path):
    """--min-new-data-accuracy applies to `promote` as to the flow, on the holdout images of the
    data versions the run learned from (its manifest), measured from the stored model."""
    import io

    from mnist_pipeline import data_versions
    from mnist_pipeline.model import model_from_bytes
    from tests.digit_images import write_folder

    assert cli("ingest", str(write_folder(tmp_path / "digits", 8)), "--holdout", "0.5").code == 0
    version = data_versions.list_versions(runs)[0]
    store_run(runs, "run-e", zoo[0], data_versions=[version.reference()])
    rows = np.load(io.BytesIO(runs.get(version.images.key)), allow_pickle=False)
    held = rows[rows["holdout"]]
    scores = model_from_bytes(zoo[0].data, "zoo.keras").predict(held["image"] / 255.0, verbose=0)
    accuracy = round(float((scores.argmax(axis=1) == held["label"]).mean()), 6)
    assert len(held) and 0 < accuracy < 1  # the zoo's best model gets some of the rendered digits wrong

    above = round(accuracy + 0.001, 6)
    blocked = cli("promote", "run-e", "--min-new-data-accuracy", str(above))
    assert blocked.code == 3, blocked.output
    assert error_line(blocked) == f"promotion blocked: new-data accuracy {accuracy:.4f} < {above:.4f}"
    assert registry.read_production(runs)[0] is None
    assert cli("promote", "run-e", "--min-new-data-accuracy", str(accuracy)).code == 0
    last = registry.read_history(runs)[-1]
    assert (last["decision"], last["new_data_accuracy"], last["min_new_data_accuracy"]) == ("promoted", accuracy, accuracy)
    again = cli("promote", "run-e", "--min-new-data-accuracy", str(above))  # in production: the rule still applies
    assert again.code == 3 and error_line(again) == \
        f"run-e is already in production, but new-data accuracy {accuracy:.4f} < {above:.4f}", again.output

    # a run that learned from MNIST alone has nothing to measure, so nothing blocks it (as in the flow)
    assert cli("promote", "run-a", "--min-new-data-accuracy", "1").code == 0
    runs.delete(keys.data_version(version.version))  # the version a run learned from, gone
    store_run(runs, "run-f", zoo[0], data_versions=[version.reference()])
    missing = cli("promote", "run-f", "--min-new-data-accuracy", "0")
    assert missing.code == 1 and error_line(missing).startswith(
        "error: data version 1, which the run learned from, is missing from "), missing.output
    store_run(runs, "run-g", zoo[0], data_versions=[{"version": 1}])
    damaged = cli("promote", "run-g", "--min-new-data-accuracy", "0")
    assert damaged.code == 1 and error_line(damaged).startswith(
        "error: runs/run-g/manifest.json is damaged: a data_versions entry without"), damaged.output


# -- damage: each ends with production unchanged, one line, and verify naming it ------------------
def _edit_json(store, key, **changes):
    store.put(key, json.dumps(dict(json.loads(store.get(key)), **changes)).encode())


DAMAGES = {
    "metrics edited": lambda s, z: _edit_json(s, "runs/run-d/metrics.json", test_accuracy=0.999),
    "manifest edited": lambda s, z: (_edit_json(s, "runs/run-d/metrics.json", test_accuracy=0.999),
                                     _edit_json(s, "runs/run-d/manifest.json", test_accuracy=0.999)),
    "production model swapped": lambda s, z: s.put("runs/run-b/model.keras", z[2].data),
    "production model garbage": lambda s, z: s.put("runs/run-b/model.keras", b"garbage"),
    "production.json not JSON": lambda s, z: s.put(keys.PRODUCTION, b"{oops"),
    "production.json {}": lambda s, z: s.put(keys.PRODUCTION, b"{}"),
    "production.json null": lambda s, z: s.put(keys.PRODUCTION, b"null"),
    "production.json string accuracy": lambda s, z: _edit_json(s, keys.PRODUCTION, test_accuracy="0.9"),
    "history record not JSON": lambda s, z: s.put(registry.history_keys(s)[-1], b"not json"),
    "history record without fields": lambda s, z: s.put(registry.history_keys(s)[-1], b'{"run_id": "run-b"}'),
}
NAMED_BY_VERIFY = {
    "metrics edited": "runs/run-d/metrics.json: ",
    "manifest edited": "runs/run-d/manifest.json",
    "production model swapped": "runs/run-b/model.keras (production model) has SHA-256",
    "production model garbage": "runs/run-b/model.keras (production model) has SHA-256",
    "production.json not JSON": "registry/production.json is damaged: not JSON",
    "production.json {}": "registry/production.json is damaged: run_id: Field required",
    "production.json null": "registry/production.json is damaged",
    "production.json string accuracy": "registry/production.json is damaged: test_accuracy",
    "history record not JSON": "is damaged: not JSON",
    "history record without fields": "is damaged: decision: Field required",
}


# The commands that use each damaged object: each must refuse (exit 1, or 3 for a gate that
# measured the truth) in one line. Commands that do not read it (promoting a healthy run while
# another run's metrics were edited) may go on: verify is what names every damage.
USERS = {
    "metrics edited": [["promote", "run-d"]],
    "manifest edited": [["promote", "run-d"]],
    "production model swapped": [["promote", "run-a"], ["promote", "run-d"], ["rollback"]],
    "production model garbage": [["promote", "run-a"], ["rollback"]],
    "history record not JSON": [["history"]],
    "history record without fields": [["history"]],
}
PRODUCTION_USERS = [["promote", "run-a"], ["promote", "run-d"], ["rollback"], ["runs"]]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_never_changes_production_and_every_error_is_one_line(runs, cli, zoo, damage):
    assert cli("promote", "run-b").code == 0
    DAMAGES[damage](runs, zoo)
    before = runs.get(keys.PRODUCTION)
    for args in USERS.get(damage, PRODUCTION_USERS):
        result = cli(*args)
        line = error_line(result)  # exactly one line, no traceback (the fixture checks)
        assert result.code in (1, 3), (args, result.output)
        assert runs.get(keys.PRODUCTION) == before, (damage, args, result.output)
        if result.code == 1:
            assert line.startswith("error: "), line
    audit = cli("verify")
    assert audit.code == 1 and NAMED_BY_VERIFY[damage] in audit.out, audit.output


def test_verify_is_clean_on_a_healthy_store(runs, cli):
    assert cli("promote", "run-b").code == 0 and cli("promote", "run-a").code == 0
    result = cli("verify")
    assert result.code == 0 and result.out.startswith(f"ok: {runs.url} is consistent"), result.output


def test_every_command_on_a_store_of_damaged_and_foreign_objects_and_bad_paths(runs, cli, tmp_path):
    """Bad store content, bad paths, bad arguments: one line each, exit 1 or 2, no traceback."""
    assert cli("promote", "run-b").code == 0
    runs.put("runs/run-c/predictions.npy", b"not numpy")
    runs.put("runs/run-a/manifest.json", b"[1, 2]")
    runs.put("stray.txt", b"someone's notes")
    runs.put("registry/history/garbage.json", b"{}")
    bad = tmp_path / "missing" / "x"
    commands = [["runs"], ["runs", "--limit", "-3"], ["history"], ["report", "zzz"], ["report", "run-b", "-o", str(bad)],
                ["report", "../etc"], ["compare", "run-a", "run-c"], ["compare", "run-b", "nope"],
                ["promote", "run-a"], ["promote", "run-c", "--min-accuracy", "2"], ["rollback"], ["verify"],
                ["gc"], ["gc", "--keep-last", "1", "--dry-run"], ["model", "-o", str(bad)], ["model", "run-a"],
                ["predict", str(tmp_path / "none.png")], ["no-such-command"]]
    for args in commands:
        result = cli(*args)
        assert result.code in (0, 1, 2, 3), args
        if result.code in (1, 2) and args[0] != "verify":
            assert result.err.strip().splitlines()[-1].startswith("error: "), (args, result.err)
            assert len([line for line in result.err.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_reason_naming_a_secret_url_is_stored_and_shown_redacted(runs, cli, tmp_path):
    """Found by an audit: a --reason was stored verbatim in the history record and the dashboard."""
    assert cli("promote", "run-b", "--reason", "see https://u:REASONPW@wiki/x?token=TOKR").code == 0
    assert registry.read_history(runs)[-1]["note"] == "see https://***@wiki/x?token=***"
    saved = tmp_path / "dashboard.html"
    shown = cli("history").output + cli("dashboard", "-o", str(saved)).output + saved.read_text()
    stored = b"".join(path.read_bytes() for path in runs.root.rglob("*") if path.is_file())
    assert "wiki/x?token=***" in shown and b"wiki/x?token=***" in stored
    assert not [word for word in ("REASONPW", "TOKR") if word in shown or word.encode() in stored]


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("args", [["predict", "https://u:PASS2@host/x.png", "--run", "run-a"],
                                  ["model", "run-a", "-o", "https://u:PASS5@h/x"]])
def test_a_url_given_for_a_path_names_no_password_in_its_error(runs, cli, args):
    """Found by an audit: the path's normalisation collapsed its `//` (`https:/u:PASS2@host/x.png`),
    which redaction did not take for a URL."""
    result = cli(*args)
    assert result.code == 1 and "https:/***@h" in error_line(result) and "PASS" not in result.output


# -- use ----------------------------------------------------------------------------------------------
def test_model_downloads_production_checked_against_its_hash(runs, cli, tmp_path, zoo):
    assert cli("promote", "run-a").code == 0
    saved = cli("model", "-o", str(tmp_path / "m.keras"))
    assert saved.code == 0 and (tmp_path / "m.keras").read_bytes() == zoo[0].data
    assert cli("model", "run-c", "-o", str(tmp_path)).code == 0 and (tmp_path / "model-run-c.keras").exists()
    runs.put("runs/run-a/model.keras", zoo[1].data)
    refused = cli("model", "-o", str(tmp_path / "m2.keras"))
    assert refused.code == 1 and "runs/run-a/model.keras (production model) has SHA-256" in error_line(refused)
    assert not (tmp_path / "m2.keras").exists()


def test_predict_classifies_digits_rendered_from_mnist_as_the_model_does(runs, cli, tmp_path, zoo, mnist_mirror):
    """Test images rendered white-on-black (PNG) and dark-on-light, 5x, off-centre (JPEG): with
    MNIST's preprocessing the model says what it says of the original images."""
    from PIL import Image

    assert cli("promote", "run-a").code == 0
    images = read_idx(mnist_mirror, "t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28)[:20]
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        canvas = Image.new("L", (300, 200), 255)
        canvas.paste(Image.fromarray(255 - image).resize((140, 140), Image.LANCZOS), (40 + 3 * i, 20 + i))
        canvas.save(tmp_path / f"{i}.jpg", quality=90)
        paths += [str(tmp_path / f"{i}.png"), str(tmp_path / f"{i}.jpg")]
    result = cli("predict", *paths, "--json")
    assert result.code == 0, result.err
    said = {Path(p["image"]).name: p["digit"] for p in json.loads(result.out)["predictions"]}
    expected = zoo[0].predictions[:20]
    assert sum(said[f"{i}.png"] == expected[i] for i in range(20)) >= 19
    assert sum(said[f"{i}.jpg"] == expected[i] for i in range(20)) >= 17
    plain = cli("predict", paths[0])
    assert plain.out.startswith(f"{paths[0]}: {expected[0]} (p")
    (tmp_path / "text.png").write_text("not an image")
    bad = cli("predict", str(tmp_path / "text.png"), paths[0])
    assert bad.code == 1 and error_line(bad) == f"error: {tmp_path}/text.png is not an image Pillow can read (give a PNG or JPEG)"
    assert bad.out.startswith(paths[0])  # the readable image was still classified


def test_stray_s3_keys_are_skipped_with_a_warning(s3_store, s3_env, moto_server, zoo, mnist_mirror, monkeypatch, capfd):
    """Keys that something else wrote (`runs/../x`, a console's `runs/zzz/` folder marker)."""
    import boto3

    cache_test_set(s3_store, mnist_mirror)
    store_run(s3_store, "run-a", zoo[0])
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    for key in ("runs/../x", "runs/zzz/", "runs/with space/x"):
        client.put_object(Bucket=s3_env["MNIST_STORE_URL"][5:], Key=key, Body=b"")
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.5")
    for args in (["runs", "--all"], ["runs"], ["gc", "--keep-last", "1", "--dry-run"], ["verify"]):
        code = main(args)
        captured = capfd.readouterr()
        assert code in (0, 1) and "Traceback" not in captured.out + captured.err, (args, captured)
        if args[0] == "runs" and "--all" in args:
            assert code == 0 and [line.split("\t")[0] for line in captured.out.splitlines()[1:]] == ["run-a"]
            assert "skipped runs/../: not a run id" in captured.err and "skipped runs/zzz/: no run files" in captured.err
        if args[0] == "verify":
            assert "runs/../x: a foreign object" in captured.out
