"""mnist_pipeline/collector.py, in fresh processes: a one-off process pauses the garbage collector
while it imports and resumes it with the imports frozen; the flows' modules imported by a
long-running process (the deployment's server, a worker) leave the collector alone."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_paused_while_importing_then_resumed_with_the_imports_frozen():
    assert _run("import gc\n"
                "from mnist_pipeline import collector\n"
                "collector.resume_after_imports()\n"  # never paused: nothing changes
                "print(gc.isenabled(), gc.get_freeze_count())\n"
                "collector.pause_while_importing()\n"
                "print(gc.isenabled())\n"
                "import json, email.mime.text\n"
                "collector.resume_after_imports()\n"
                "print(gc.isenabled(), gc.get_freeze_count() > 1000)\n") == ["True", "0", "False", "True", "True"]


def test_a_flow_process_resumes_collecting_once_tensorflow_is_imported():
    assert _run("import gc\n"
                "from mnist_pipeline import collector\n"
                "collector.pause_while_importing()\n"
                "from flows import plumbing\n"
                "with plumbing.tensorflow_imported_in_background():\n"
                "    pass\n"
                "import sys\n"
                "print('keras' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 100000)\n") == ["True"] * 3


def test_importing_the_flows_in_a_long_running_process_leaves_the_collector_on():
    assert _run("import gc\n"
                "import flows.train_flow, flows.tune_flow, deployments.serve\n"
                "print(gc.isenabled(), gc.get_freeze_count())\n") == ["True", "0"]


def test_the_console_script_resumes_collecting_once_tensorflow_is_imported(tmp_path):
    """`mnist-pipeline rollback` on an empty store: it loads TensorFlow, then fails in one line.
    Printed at exit, after the command: TensorFlow imported, the collector on, the imports frozen.
    (`main`, which the CLI tests call in their own process, leaves the collector alone: the
    flag below is only set by the console script's `run`.)"""
    (tmp_path / "store").mkdir()  # an empty store: a missing one is refused before TensorFlow loads
    code = ("import atexit, gc, os, sys\n"
            f"os.environ['MNIST_STORE_URL'] = {str(tmp_path / 'store')!r}\n"
            "sys.argv = ['mnist-pipeline', 'rollback']\n"
            "atexit.register(lambda: print('keras' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 100000))\n"
            "from mnist_pipeline.cli import common, run\n"
            "print(common.one_off_process)\n"
            "run()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr  # one line, as ever
    assert proc.stdout.split() == ["False", "True", "True", "True"]
