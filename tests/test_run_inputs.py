"""What a run's model depends on (mnist_pipeline/run_inputs.py): every difference from
production's run is named, and only an identical set of inputs reads as unchanged."""

from __future__ import annotations

import shutil

import pytest

from mnist_pipeline.provenance import SOURCE_FOLDERS, source_sha256
from mnist_pipeline.run_inputs import differences, ranges
from tests.conftest import REPO

pytestmark = pytest.mark.unit

V1, V2, V3 = ({"version": n, "sha256": str(n) * 64, "train": 100 * n, "holdout": 25 * n} for n in (1, 2, 3))
RUN = {"data_versions": [V1, V2], "git_commit": "a" * 40, "source_sha256": "b" * 64,
       "versions": {"python": "3.11.7", "keras": "3.15.1"},
       "parameters": {"model": "mlp", "epochs": 10, "skip_unchanged": True, "data_version": None}}


def test_identical_inputs_are_unchanged_whatever_skip_unchanged_and_data_version_say():
    production = dict(RUN, parameters=dict(RUN["parameters"], skip_unchanged=False, data_version=2))
    assert differences(RUN, production) == []


def test_each_input_that_differs_is_named_production_first():
    production = {"data_versions": [V1, dict(V2, sha256="f" * 64), V3], "git_commit": "c" * 40,
                  "source_sha256": "b" * 64, "versions": {"python": "3.11.7", "keras": "3.14.0"},
                  "parameters": {"model": "mlp", "epochs": 3}}
    assert differences(RUN, production) == [
        "data: version 3 no longer used", "data: version 2 holds other images than production's run saw",
        f"code: commit {'c' * 12} → {'a' * 12}", "library: keras 3.14.0 → 3.15.1", "parameter: epochs 3 → 10"]
    assert differences(dict(RUN, data_versions=[V1, V2, V3]), dict(RUN, data_versions=[V1])) == [
        "data: versions 2, 3 added (500 training images)"]


def test_a_manifest_from_before_these_were_recorded_differs_and_so_does_no_production():
    old = {"git_commit": "a" * 40, "versions": RUN["versions"], "parameters": {"model": "mlp", "epochs": 10}}
    assert differences(RUN, old) == ["data: versions 1, 2 added (300 training images)",
                                     f"code: source files none → {'b' * 12}"]
    assert differences(RUN, None) == ["no model in production"]


def test_version_ranges_read_as_people_write_them():
    assert ranges([4]) == "version 4" and ranges([1, 2]) == "versions 1, 2"
    assert ranges([5, 1, 2, 3, 7]) == "versions 1-3, 5, 7"


def test_the_source_hash_changes_with_any_source_file_and_with_nothing_else(tmp_path):
    for folder in SOURCE_FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_sha256(tmp_path) == source_sha256(REPO)
    (tmp_path / "tasks" / "notes.md").write_text("not code")
    (tmp_path / "mnist_pipeline" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "mnist_pipeline" / "__pycache__" / "x.py").write_text("cache")
    assert source_sha256(tmp_path) == source_sha256(REPO)
    template = tmp_path / "tasks" / "templates" / "report.html.j2"
    template.write_text(template.read_text() + " ")
    assert source_sha256(tmp_path) != source_sha256(REPO)
