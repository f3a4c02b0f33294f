"""`mnist-pipeline`: review stored runs, manage the production model, use it.

Exit status: 0 done; 1 an error (one line on stderr, never a traceback); 2 bad arguments;
3 a promotion or rollback refused by the gate (production unchanged). `verify` exits 1 when it
finds problems, one line each.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
# Typer 0.29 vendors its own copy of click: its exceptions are not `click`'s.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from mnist_pipeline.cli import review, manage, use, data  # noqa: I001 (the order of --help)
from mnist_pipeline.cli import common
from mnist_pipeline.cli.common import app, err
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.redaction import redact
from mnist_pipeline.startup import prepare_process

__all__ = ["app", "data", "main", "manage", "review", "use"]


class _WarningLines(logging.Handler):
    """Warnings from the store (retries) and the listings (foreign objects) as `warning: ...`,
    each once per command (a listing read page by page meets the same stray key on every page)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"warning: {record.getMessage()}"
        if line not in self.said:
            self.said.add(line)
            err.print(line, markup=False, highlight=False, soft_wrap=True)


def _setup_logging() -> None:
    logger = logging.getLogger("mnist_pipeline")
    handler = next((h for h in logger.handlers if isinstance(h, _WarningLines)), None)
    if handler is None:
        handler = _WarningLines(logging.WARNING)
        logger.addHandler(handler)
    handler.said.clear()  # a new command (tests call main() many times in one process)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _one_line(message: str) -> None:
    err.print(f"error: {redact(message)}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """The console script: every way out is one line and an exit status, never a traceback
    (MNIST_DEBUG=1 shows the traceback of an unexpected error)."""
    prepare_process()
    _setup_logging()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="mnist-pipeline", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except NoArgsIsHelpError as exc:
        err.print(exc.ctx.get_help() if exc.ctx else exc.format_message(), markup=False, highlight=False)
        return 2
    except UsageError as exc:
        name = exc.ctx.command_path if exc.ctx else "mnist-pipeline"
        _one_line(f"{exc.format_message()} (see `{name} --help`)")
        return 2
    except (typer.Abort, KeyboardInterrupt):
        _one_line("interrupted")
        return 130
    except ClickException as exc:
        _one_line(exc.format_message())
        return exc.exit_code
    except PipelineError as exc:
        _one_line(str(exc))
        return 1
    except Exception as exc:
        if os.environ.get("MNIST_DEBUG"):
            raise
        _one_line(f"unexpected {type(exc).__name__}: {exc} (MNIST_DEBUG=1 shows where)")
        return 1


def run() -> None:
    common.one_off_process = True
    sys.exit(main())
