"""Python's cyclic garbage collector around a one-off process's imports and its exit.

`python flows/X.py`, its temporary Prefect server, the `mnist-pipeline` commands that load a model
and the benchmark's plain pipeline each import TensorFlow or Prefect's server: hundreds of
thousands of long-lived objects. While they import, the collector runs full passes over all of
them again and again, and at exit Python runs more passes before it frees them: seconds of CPU
per process (docs/performance.md has the figures).

So such a process pauses the collector while it imports, then moves what it imported to the
collector's permanent generation (`gc.freeze`: never scanned again, still freed by reference
counting) and resumes it; and freezes everything at exit. Long-running processes (the
deployment's server, workers, tests) never call these.
"""

from __future__ import annotations

import atexit
import gc

_paused = False


def pause_while_importing() -> None:
    """First thing in a one-off process: no collector passes until `resume_after_imports`,
    none at exit."""
    global _paused
    if not _paused:
        _paused = True
        gc.disable()
        atexit.register(gc.freeze)  # atexit runs before the interpreter's own final passes


def resume_after_imports() -> None:
    """The imports are done: leave them out of every later pass, and collect as usual. Does
    nothing in a process that did not pause."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
