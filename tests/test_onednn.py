"""mnist_pipeline turns TensorFlow's oneDNN kernels on where TensorFlow would not (CPUs without
AVX512_VNNI/BF16 or AMX: the cnn trains 2x slower without them), and leaves a user's choice alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = ("import mnist_pipeline, tensorflow\n"
         "from tensorflow.python.util import _pywrap_util_port as port\n"
         "print('onednn', port.IsMklEnabled())")


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False"), ("1", "True")])
def test_onednn_is_on_in_pipeline_processes_unless_the_user_turned_it_off(setting, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["onednn", expected]
