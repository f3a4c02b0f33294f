"""What the commands share: the Typer app, the consoles, tables that survive a pipe, times."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mnist_pipeline import collector, keys
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import write_atomic
from mnist_pipeline.redaction import redact
from mnist_pipeline.settings import Settings, load_settings
from mnist_pipeline.store import ArtifactStore, open_store

app = typer.Typer(help="Review stored MNIST runs, manage the production model, and use it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
EXIT_BLOCKED = 3


class WarningLines(logging.Handler):
    """Warnings from the store (retries) and the listings (foreign objects) as `warning: ...`,
    each once per command (a listing read page by page meets the same stray key on every page)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"warning: {one_line(record.getMessage())}"
        if line not in self.said:
            self.said.add(line)
            err.print(line, markup=False, highlight=False, soft_wrap=True)


def setup_logging() -> None:
    logger = logging.getLogger("mnist_pipeline")
    handler = next((h for h in logger.handlers if isinstance(h, WarningLines)), None)
    if handler is None:
        handler = WarningLines(logging.WARNING)
        logger.addHandler(handler)
    handler.said.clear()  # a new command (tests call main() many times in one process)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


@app.callback()
def _main() -> None:
    """Settings come from the environment (MNIST_STORE_URL, AWS_*): see the README."""


def settings_and_store() -> tuple[Settings, ArtifactStore]:
    """Every command reviews or manages an existing store: a missing folder is an error, never
    created (a mistyped MNIST_STORE_URL would otherwise look like an empty store)."""
    settings = load_settings()
    return settings, open_store(settings, create=False)


def output_path(output: str | Path | None, default_name: str) -> Path:
    """The user's `output`: a file, or a folder to put `default_name` in (the current folder when
    None); its folder must exist. A str, not a Path: `DIR/` names a folder, and Path drops the
    slash (a missing DIR/ was written as a file named DIR)."""
    target = Path(output or default_name)
    if target.is_dir() or str(output or "").endswith("/"):
        target = target / default_name
    folder = target.parent
    if not folder.is_dir():
        why = f"{folder} is not a folder" if folder.exists() else f"the folder {folder} does not exist"
        raise PipelineError(f"cannot write {target}: {why}")
    return target


def save(output: str | Path | None, default_name: str, data: bytes) -> Path:
    """Write `data` to output_path(output, default_name), whole or not at all (mnist_pipeline/files.py)."""
    target = output_path(output, default_name)
    write_atomic(target, data)
    return target


def refresh_dashboard(settings: Settings, store: ArtifactStore) -> None:
    """The store's index.html after a change to the registry: a page that cannot be rebuilt is a
    warning, never a different outcome of the command."""
    from mnist_pipeline import dashboard

    try:
        dashboard.refresh(store, settings.min_accuracy)
    except Exception as exc:
        warn(f"the dashboard ({store.location(keys.DASHBOARD)}) could not be refreshed: {exc}")


def iso(moment: datetime | str | None) -> str:
    """2026-11-25T13:38:38Z: one unambiguous form everywhere."""
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


# A newline or other control character in a name (a file, a key), shown escaped: one problem
# stays one line for the person and for `grep`.
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def one_line(text: str) -> str:
    return text.translate(_ESCAPED)


def warn(text: str) -> None:
    err.print(f"warning: {one_line(text)}", markup=False, highlight=False, soft_wrap=True)


def error_line(text: str, label: str = "error") -> None:
    """`error: ...` on stderr, redacted (a URL given for a path may carry a password), one line."""
    err.print(f"{label}: {one_line(redact(text))}", markup=False, highlight=False, soft_wrap=True)


def print_table(title: str, columns: list[str], rows: list[list[str]], right: set[str] = frozenset()) -> None:
    """A rich table on a terminal; plain tab-separated lines with a header when piped, so ids
    and times are never cut and `cut`/`awk` work."""
    if not out.is_terminal:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@contextlib.contextmanager
def quiet_stderr():
    """TensorFlow writes its start-up lines (oneDNN, CPU features) straight to file descriptor 2,
    below Python's logging: hide them while it loads, keep our own one-line errors."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


# Set by the console script (`run`): this process ends with its command. Tests call `main` in
# their own long-running process, where the garbage collector is left alone.
one_off_process = False


def load_keras_quietly() -> None:
    """TensorFlow without its start-up lines; in a one-off process, with the garbage collector
    paused while it imports and skipped at exit (mnist_pipeline/collector.py; docs/performance.md)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if one_off_process:
        collector.pause_while_importing()
    try:
        with quiet_stderr():
            import keras  # noqa: F401
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
    finally:
        collector.resume_after_imports()
