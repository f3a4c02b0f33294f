"""`python -m mnist_pipeline.prefect_server --parent-pid PID [uvicorn's options]`: what `python -m
uvicorn` does, for Prefect's temporary API server (mnist_pipeline/ephemeral_server.py), with the
garbage collector paused while the server's application imports (mnist_pipeline/collector.py).
The server's start is on the critical path of every `python flows/X.py` run, and shares the
machine's cores with that run's own imports; it dies with its parent.

The server dies with the run that started it, however that run ends: a run killed by SIGKILL
left it running (240 MB) with no one to stop it."""

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Linux sends this process SIGKILL when its parent dies (PR_SET_PDEATHSIG: the parent is
    the thread that started it, the run's main thread); elsewhere a thread watches the parent's
    pid. A parent that died before this ran is noticed too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        armed = False
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--parent-pid"]:
        die_with_parent(int(sys.argv[2]))
        del sys.argv[1:3]

    from mnist_pipeline import collector

    collector.pause_while_importing()
    import uvicorn
    from prefect.server.api import server  # noqa: F401  (uvicorn's --factory finds it imported)

    collector.resume_after_imports()
    sys.exit(uvicorn.main())
