"""mnist_pipeline/threadsafe_ast.py, in fresh processes: eight threads parse (as NumPy does for
every .npy header) while the collector runs finalizers that hand the interpreter to another
thread. On this Python (3.11.7) that fails with "AST constructor recursion depth mismatch"
without the guard, as `mnist-pipeline verify` did in one CI run; in a process prepared as every
entry point prepares it (startup.prepare_process) it never does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_pipeline import threadsafe_ast
from tests.conftest import REPO

HARNESS = """
import ast, gc, sys, threading, time
if sys.argv[1] == "pipeline":
    from mnist_pipeline import startup
    startup.prepare_process()

class HandsOver:
    def __del__(self):
        time.sleep(0)  # lets another thread run

def nested(depth, fn):  # threads at different call depths: a reset counter then differs
    return fn() if depth == 0 else nested(depth - 1, fn)

def parse():
    garbage = [HandsOver() for _ in range(3)]
    for g in garbage:
        g.cycle = g  # only the collector frees these: it runs in the middle of the parse
    del garbage
    ast.literal_eval("{'descr': '|u1', 'fortran_order': False, 'shape': (10000,), }")

failures = []
def reader(depth):
    for _ in range(100):
        try:
            nested(depth, parse)
        except SystemError as exc:
            failures.append(exc)

gc.set_threshold(20)
for _ in range(10):  # the race shows mostly while threads start
    threads = [threading.Thread(target=reader, args=(3 * i,)) for i in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
print(len(failures))
"""


def fresh_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def parse_failures(process: str) -> int:
    proc = fresh_python(HARNESS, process)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout)


def test_parsing_from_many_threads_never_fails_in_a_pipeline_process():
    assert parse_failures("pipeline") == 0
    if threadsafe_ast.AFFECTED:  # the harness reaches the bug: without the guard, parses fail
        assert parse_failures("plain") > 0


FORK_WHILE_A_THREAD_PARSES = """
import ast, os, threading, time
from mnist_pipeline import threadsafe_ast
threadsafe_ast.install()

parsing, done = threading.Event(), threading.Event()
def parse_slowly():  # a thread in the middle of a parse, as the fork happens
    with threadsafe_ast._turns:
        parsing.set()
        done.wait()
threading.Thread(target=parse_slowly, daemon=True).start()
parsing.wait()
child = os.fork()
if child == 0:
    ast.literal_eval("(1, 2)")  # the thread holding the turn was not copied
    os._exit(0)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    pid, status = os.waitpid(child, os.WNOHANG)
    if pid:
        print("child exit", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(child, 9)
    print("child hung")
done.set()
"""


def test_a_child_forked_while_another_thread_parses_can_parse():
    proc = fresh_python(FORK_WHILE_A_THREAD_PARSES)
    assert proc.stdout.strip() == "child exit 0", (proc.stdout, proc.stderr[-2000:])


ENTRY_POINT_TAKES_TURNS = """
import ast, sys
entry = sys.argv[1]
if entry == "cli":
    from mnist_pipeline.cli import main
    main(["--help"])
elif entry == "flow":
    from flows import plumbing
    plumbing.prepare_run()
elif entry == "serve":
    from deployments import serve
    try:
        serve.main(["--help"])
    except SystemExit:
        pass
print(getattr(ast.parse, "takes_turns", False))
"""


@pytest.mark.parametrize("entry", ["cli", "flow", "serve"])
def test_every_entry_point_installs_the_guard(entry):
    proc = fresh_python(ENTRY_POINT_TAKES_TURNS, entry)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(threadsafe_ast.AFFECTED)
