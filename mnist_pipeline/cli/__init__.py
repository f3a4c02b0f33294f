"""`mnist-pipeline`: review stored runs, manage the production model, use it.

Exit status: 0 done; 1 an error (one line on stderr, never a traceback); 2 bad arguments;
3 a promotion or rollback refused by the gate (production unchanged); 130/143 stopped by
SIGINT/SIGTERM (one line; see interrupts.py). `verify` exits 1 when it finds problems, one line
each.

This module imports nothing heavy at its top: the console script imports it, then `run` takes
SIGINT and SIGTERM over before Typer, the store and the commands are imported (a second or more).
"""

from __future__ import annotations

import os
import sys

from mnist_pipeline.cli import interrupts

__all__ = ["app", "data", "main", "manage", "review", "use"]


def __getattr__(name: str):
    if name == "app":  # every command registered, on first use
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app():
    # registers the commands, in the order of --help
    from mnist_pipeline.cli import review, manage, use, data  # noqa: F401, I001
    from mnist_pipeline.cli.common import app

    return app


def _one_line(message: str) -> None:
    from mnist_pipeline.cli.common import error_line

    error_line(message)


def main(argv: list[str] | None = None) -> int:
    """The console script: every way out is one line and an exit status, never a traceback
    (MNIST_DEBUG=1 shows the traceback of an unexpected error)."""
    import typer
    # Typer 0.29 vendors its own copy of click: its exceptions are not `click`'s.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from mnist_pipeline.cli.common import err, setup_logging
    from mnist_pipeline.errors import PipelineError
    from mnist_pipeline.startup import prepare_process

    prepare_process()
    setup_logging()
    command = typer.main.get_command(_app())
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
        if interrupts.within(exc) or os.environ.get("MNIST_DEBUG"):
            raise
        _one_line(f"unexpected {type(exc).__name__}: {exc} (MNIST_DEBUG=1 shows where)")
        return 1


def run() -> None:
    """The console script's entry (pyproject.toml): the signals first, then the imports and the
    command; once it has ended, its exit status stands whatever signal comes."""
    interrupts.install()
    try:
        try:
            from mnist_pipeline.cli import common

            common.one_off_process = True
            status = main()
        finally:
            interrupts.ignore()
    except BaseException as exc:
        stopped_by = interrupts.within(exc)
        if stopped_by is None:
            raise
        interrupts.stop(stopped_by.signum)
    sys.exit(status)
