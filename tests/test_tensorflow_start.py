"""mnist_pipeline/tensorflow_start.py, in fresh processes: TensorFlow's oneDNN kernels on where
TensorFlow would not switch them on (CPUs without AVX512_VNNI/BF16 or AMX: the cnn trains 2x
slower without them), a user's choice left alone; Keras imported without scikit-learn, which still
imports afterwards (Keras Tuner's Bayesian oracle needs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = ("import mnist_pipeline, tensorflow\n"
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
import mnist_pipeline
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
