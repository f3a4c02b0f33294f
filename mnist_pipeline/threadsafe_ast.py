"""`ast.parse` made safe to call from two threads at once on the Pythons where it is not.

CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 build Python AST objects with one recursion counter per
interpreter instead of one per call (python/cpython#106905, fixed in 3.11.8 and 3.12.2). When the
garbage collector hands the interpreter to another thread in the middle of a parse, the other
thread's parse resets the counter and the first one fails with "SystemError: AST constructor
recursion depth mismatch". Our threads parse more than it seems: NumPy reads every .npy header
with `ast.literal_eval` (`verify` reads stored predictions from 16 threads; one CI run failed
so), `inspect` parses builtins' signatures and matplotlib its settings (the flow imports
TensorFlow in a thread while Prefect starts). On those Pythons, parses take turns.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import threading

AFFECTED = (3, 11) <= sys.version_info[:3] < (3, 11, 8) or (3, 12) <= sys.version_info[:3] < (3, 12, 2)
_turns = threading.RLock()


def _new_turns_after_fork() -> None:
    global _turns
    _turns = threading.RLock()  # a fork copies the lock as it was, maybe held by a thread it did not copy


def install() -> None:
    """Wrap `ast.parse` in a lock (re-entrant: a finalizer run by the collector mid-parse may
    parse on the same thread). `ast.literal_eval` and `inspect` call it by name, so they go
    through the lock too."""
    if not AFFECTED or getattr(ast.parse, "takes_turns", False):
        return
    parse = ast.parse

    @functools.wraps(parse)
    def parse_in_turn(*args, **kwargs):
        with _turns:
            return parse(*args, **kwargs)

    parse_in_turn.takes_turns = True
    ast.parse = parse_in_turn
    os.register_at_fork(after_in_child=_new_turns_after_fork)
