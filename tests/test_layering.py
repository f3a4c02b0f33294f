"""The layering, checked by the tool made for it (import-linter, contracts in pyproject.toml):
deployments, then flows, then tasks, then mnist_pipeline, each importing only those below it, and
no circle of imports inside a package. The check is shown to fail on a copy that breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("deployments", "flows", "tasks", "mnist_pipeline")


def lint(root: Path) -> subprocess.CompletedProcess:
    # The packages of `root` come first on the path, before the installed (editable) checkout.
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))


def test_the_code_keeps_its_layers_and_has_no_circles():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("mnist_pipeline/stats.py", "import tasks.fetch", "no import runs back up"),
    ("tasks/train.py", "import flows.plumbing", "no import runs back up"),
    ("tasks/train.py", "import tasks.store_artifacts", "no circle of imports"),
])
def test_an_import_that_breaks_them_is_caught(tmp_path, module, line, broken):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # breaks the layering on purpose\n")
    proc = lint(tmp_path)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout and broken in proc.stdout, proc.stdout[-3000:]
