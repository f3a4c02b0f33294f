"""How this project's processes start: explicit calls that the entry points make, never done on
import (importing any module of this package changes nothing in the interpreter).

- `prepare_process()`: every entry point, first thing (the CLI, a flow's body wherever it runs,
  serve.py, a tuning trial on a Dask worker): every log record redacted, AST parses safe from
  many threads, and `prepare_tensorflow()`, TensorFlow's settings that must be in place before
  its first import.
- `fast_start()`: `python flows/X.py` only, first thing: a one-off process that wants its result
  soon (docs/performance.md measures each of these).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys


def prepare_tensorflow() -> None:
    """oneDNN's kernels on (TensorFlow's x86 wheels switch them on by themselves only on CPUs with
    AVX512_VNNI, AVX512_BF16 or AMX; elsewhere the cnn trains at half speed), TensorFlow's C++
    start-up lines off, and Keras imported without scikit-learn. A value the user set wins."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules and not any(isinstance(f, KerasWithoutSklearn) for f in sys.meta_path):
        sys.meta_path.insert(0, KerasWithoutSklearn())


def prepare_process() -> None:
    """Idempotent. Every log record is redacted as it is made, in this process whatever it is (a
    Dask worker logs a failed call with its arguments, the mirrors' URLs among them). Our threads
    parse (NumPy reads each .npy header with `ast.literal_eval`; `verify` reads from 16 threads):
    on the Pythons where two parses at once can fail, they take turns (threadsafe_ast)."""
    from mnist_pipeline import threadsafe_ast
    from mnist_pipeline.redaction import install_log_redaction

    install_log_redaction()
    threadsafe_ast.install()
    prepare_tensorflow()


def fast_start() -> None:
    """For `python flows/X.py`, before it imports Prefect: Prefect's temporary server starts now,
    in parallel with this process's imports; the garbage collector waits until TensorFlow is
    imported; since TensorFlow then imports in a thread while the main thread starts Prefect, AST
    parses take turns on the Pythons where two at once can fail (threadsafe_ast); and until the
    flow's entry takes SIGINT and SIGTERM over, they end the importing process in one line (the
    server dies with it)."""
    from mnist_pipeline import collector, ephemeral_server

    collector.pause_while_importing()
    prepare_process()
    # Before the server: a signal between its launch and these lines was Python's own (exit -2 by
    # KeyboardInterrupt), a window a busy machine kept open past 0.2 s. The server ends with us.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopped_while_importing)
    ephemeral_server.launch_early()


def _stopped_while_importing(signum, frame):
    print(f"error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
    os._exit(128 + signum)


class KerasWithoutSklearn(importlib.abc.MetaPathFinder):
    """`import keras` loads its scikit-learn wrappers (keras.wrappers), and with them scikit-learn
    itself whenever it is installed, which it is here (Keras Tuner's Bayesian oracle needs it): a
    large share of Keras's import, for wrappers the pipeline never uses. So while Keras's own
    package module runs, scikit-learn reads as absent (Keras then defines its wrappers without
    it); afterwards it imports as usual."""

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
