"""mnist_pipeline/startup.py, in fresh processes: importing the package (and the CLI, the stages and
the flows) changes nothing in the interpreter; what a process needs it asks for explicitly:
TensorFlow's oneDNN kernels on where TensorFlow would not switch them on, a user's choice left
alone; Keras imported without scikit-learn, which still imports afterwards (Keras Tuner's Bayesian
oracle needs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = ("from mnist_pipeline import startup\nstartup.prepare_tensorflow()\nimport tensorflow\n"
         "from tensorflow.python.util import _pywrap_util_port as port\n"
         "print('onednn', port.IsMklEnabled())")


# "1" (the user's explicit yes) ends as the default does; it is in `make test-all`.
@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False"),
                                               pytest.param("1", "True", marks=pytest.mark.slow)])
def test_onednn_is_on_in_pipeline_processes_unless_the_user_turned_it_off(setting, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["onednn", expected]


SKLEARN_PROBE = """
import sys
from mnist_pipeline import startup
startup.prepare_tensorflow()
import keras
print("after keras:", "sklearn" in sys.modules)
import sklearn
from keras_tuner.oracles import BayesianOptimizationOracle
import keras_tuner
hp = keras_tuner.HyperParameters()
hp.Float("lr", 1e-4, 1e-2, sampling="log")
oracle = BayesianOptimizationOracle(objective="val_accuracy", max_trials=3, num_initial_points=1,
                                    hyperparameters=hp)
print("sklearn:", sklearn.__version__ == __import__("importlib.metadata").metadata.version("scikit-learn"))
print("wrappers:", keras.wrappers.SKLearnClassifier.__name__)
"""


def test_keras_starts_without_scikit_learn_which_still_imports_afterwards():
    proc = subprocess.run([sys.executable, "-c", SKLEARN_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["after keras: False", "sklearn: True", "wrappers: SKLearnClassifier"]



SIDE_EFFECTS_OF = """
import ast, gc, logging, os, sys
def state():
    def ours(things):
        return [x for x in things if type(x).__module__.split(".")[0] in ("mnist_pipeline", "tasks", "flows")]
    loggers = {name: ours(logging.getLogger(name).filters) for name in ("prefect.flow_runs", "prefect.task_runs",
                                                                         "prefect.engine", "prefect", "")}
    loggers["mnist_pipeline handlers"] = list(logging.getLogger("mnist_pipeline").handlers)
    return {"ast.parse": ast.parse, "sys.meta_path": list(sys.meta_path), "our finders": ours(sys.meta_path),
            "gc enabled": gc.isenabled(), "environment": dict(os.environ), "our log filters": loggers,
            "recursion limit": sys.getrecursionlimit()}
split = sys.argv.index("--")
libraries, modules = sys.argv[1:split], sys.argv[split + 1:]
for name in libraries:  # the libraries' own imports do what they do, before the snapshot
    __import__(name)
before = state()
for name in modules:
    __import__(name)
after = state()
for name in before:
    print(name, "unchanged" if before[name] == after[name] else f"CHANGED: {before[name]!r} -> {after[name]!r}")
print("keras imported:", "keras" in sys.modules, "tensorflow imported:", "tensorflow" in sys.modules)
"""


def side_effects_of(*modules: str, libraries: tuple[str, ...] = ()) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", SIDE_EFFECTS_OF, *libraries, "--", *modules], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("TF_")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


UNCHANGED = ["ast.parse unchanged", "sys.meta_path unchanged", "our finders unchanged", "gc enabled unchanged",
             "environment unchanged", "our log filters unchanged", "recursion limit unchanged",
             "keras imported: False tensorflow imported: False"]


def test_importing_the_package_and_its_cli_changes_nothing_in_the_interpreter():
    assert side_effects_of("mnist_pipeline", "mnist_pipeline.cli") == UNCHANGED


def test_importing_every_module_of_ours_adds_nothing_to_the_interpreter():
    """Prefect and the libraries may register their own import hooks when first imported; none of
    ours is added, nothing else of the interpreter's changes, and nothing imports TensorFlow."""
    ours = [str(p.relative_to(REPO).with_suffix("")).replace("/", ".") for folder in ("mnist_pipeline", "tasks", "flows",
                                                                                     "deployments")
            for p in sorted((REPO / folder).rglob("*.py")) if p.name != "__init__.py"]
    libraries = ("prefect", "prefect.flows", "prefect.tasks", "prefect.artifacts", "prefect.events",
                 "prefect.client.orchestration", "prefect_dask", "distributed", "typer", "rich", "boto3", "jinja2",
                 "matplotlib", "apprise", "PIL.Image")
    lines = side_effects_of(*ours, libraries=libraries)
    # Prefect adds an import hook of its own when some of its modules first load (lazily)
    assert [line for line in lines if not line.startswith("sys.meta_path")] == [
        line for line in UNCHANGED if not line.startswith("sys.meta_path")], lines
