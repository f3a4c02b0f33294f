"""How TensorFlow and Keras start in this project's processes. Both settings must be in place
before their first import, so the package's __init__ applies them: it is the root of every entry
point (the flows, the CLI, Dask workers unpickling a trial)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys


def prepare() -> None:
    # TensorFlow's x86 wheels switch oneDNN on by themselves only on CPUs with AVX512_VNNI,
    # AVX512_BF16 or AMX. Elsewhere (this project's AVX2 machine, AMD EPYC Zen 3) its convolutions
    # fall back to Eigen kernels built for plain AVX: the cnn's 7 epochs took 137 s instead of
    # 69 s (measured). A value the user set wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "keras" not in sys.modules and not any(isinstance(f, KerasWithoutSklearn) for f in sys.meta_path):
        sys.meta_path.insert(0, KerasWithoutSklearn())


class KerasWithoutSklearn(importlib.abc.MetaPathFinder):
    """`import keras` loads its scikit-learn wrappers (keras.wrappers), and with them scikit-learn
    itself whenever it is installed, which it is here: Keras Tuner's Bayesian oracle needs it.
    That was 1.5-2.5 s of every process's 7-9 s Keras import on this project's machine, for
    wrappers the pipeline never uses. So while Keras's own package module runs, scikit-learn reads
    as absent (Keras then defines its wrappers without it); afterwards it imports as usual."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # once: only the first import of keras runs its package module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or "sklearn" in sys.modules:
            return spec
        run_package = spec.loader.exec_module

        def exec_module(module):
            sys.modules["sklearn"] = None  # `import sklearn` raises ImportError meanwhile
            try:
                run_package(module)
            finally:
                if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
                    del sys.modules["sklearn"]

        spec.loader.exec_module = exec_module
        return spec
