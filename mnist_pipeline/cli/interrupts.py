"""SIGINT (Ctrl-C) and SIGTERM in `mnist-pipeline`: from the console script's first line on,
imports included, one line and exit 130/143 in the flows' words (flows/plumbing.py), never a
traceback, never a silent end.

A write that must be whole (the registry's, gc's deletions) is `held`: a signal meanwhile waits
for its end. Once a command's change is made (`finished`), a signal ends it with the command's own
exit status and a warning of what may be missing: production did change, as a promoted run exits
0 whatever stopped it afterwards.

Light (no typing either): the console script imports this before it can take the signals over.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a signal, unwinding may wait for a thread pool to finish its queue (verify's reads, many
# seconds on a large S3 store): past this the process ends anyway. No write is under way then:
# writes are held, and the watch waits for them.
GRACE_S = 2.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread. Not a KeyboardInterrupt: Typer turns those
    into a silent exit 130 whatever the signal; and no `except Exception` may swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signal received (first only), whether it was raised, how many held writes are under way,
# what to say if stopped now; `ending` is set once the main thread has raised it (the watch's cue).
_state: dict = {"signal": None, "raised": False, "holding": 0, "unchanged": "production unchanged",
                "finished": None, "over": False, "stderr": None, "ending": threading.Event(),
                "said": threading.Lock()}


def install() -> None:
    """The console script's first call: a signal from here on ends the process in one line."""
    _state.update(signal=None, raised=False, holding=0, unchanged="production unchanged", finished=None, over=False)
    try:  # the line's own copy of stderr: it is said even while TensorFlow's start-up is hidden
        _state["stderr"] = os.dup(2)
    except OSError:
        _state["stderr"] = None
    threading.Thread(target=_watch, name="interrupt-watch", daemon=True).start()  # now: not from a handler
    _unraisable.previous = sys.unraisablehook
    sys.unraisablehook = _unraisable
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def ignore() -> None:
    """The command has ended: its exit status stands, a late signal changes nothing (it made
    the interpreter's exit end by the signal, a silent -2 after complete output)."""
    _state["over"] = True
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def within(exc: BaseException | None) -> Interrupted | None:
    """The Interrupted that `exc` is or was raised from: Python 3.11 turns one raised while a
    class is made (in a `__set_name__`, seen during imports) into a RuntimeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def unchanged(what: str) -> None:
    """What a command stopped before its change leaves as it was (default: production)."""
    _state["unchanged"] = what


def finished(status: int, missing: str | None) -> None:
    """The command's change is made: a signal from now on ends it with `status`, its own, and
    (unless None) a warning that `missing`, what the command still had to do, may be missing."""
    _state["finished"] = (status, missing)


@contextmanager
def held():
    """A write that must be whole: a signal meanwhile waits for the block's end, then stops the
    command (a block that fails ends the command with its own error)."""
    _state["holding"] += 1
    try:
        yield
    finally:
        _state["holding"] -= 1
    if _state["signal"] is not None and not _state["raised"] and not _state["holding"]:
        _raise()


def _handler(signum, frame) -> None:
    if _state["signal"] is not None:  # once: a second signal would break the unwinding of the first
        return
    _state["signal"] = signum
    if not _state["holding"]:
        _raise()


def _raise() -> None:  # never returns
    _state["raised"] = True
    _state["ending"].set()
    raise Interrupted(_state["signal"])


def _unraisable(info) -> None:
    """Raised where Python cannot raise (a `__del__`, a garbage collector's callback), Interrupted
    is dropped: no "Exception ignored" traceback; the watch ends the command GRACE_S later."""
    if not isinstance(info.exc_value, Interrupted):
        _unraisable.previous(info)


def _watch() -> None:
    """Ends the process GRACE_S after the signal was raised if the main thread has not by then
    (a thread pool's queue, a dropped Interrupted), never while a write is held, nor once the
    command has ended on its own."""
    _state["ending"].wait()
    time.sleep(GRACE_S)
    while _state["holding"]:
        time.sleep(0.05)
    if not _state["over"]:
        stop(_state["signal"])


def stop(signum: int) -> None:  # never returns
    """Say the one line (once, whichever thread comes first) and end the process at once: the
    command is over, threads still working for it are not waited for."""
    with _state["said"]:
        status = _say(signum)
        os._exit(status)


def _say(signum: int) -> int:
    name = signal.Signals(signum).name
    if _state["finished"] is None:
        status, line = 128 + signum, f"error: interrupted by {name}; {_state['unchanged']}"
    else:
        status, missing = _state["finished"]
        line = missing and f"warning: interrupted by {name} after the change was made: {missing}"
    for stream in (sys.stdout, sys.stderr):  # what the command said first comes first
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    if line:
        try:
            os.write(_state["stderr"] if _state["stderr"] is not None else 2, f"{line}\n".encode())
        except OSError:
            pass
    return status
