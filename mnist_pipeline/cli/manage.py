"""Manage: promote, rollback, verify, gc (each change refreshes the store's dashboard, index.html)."""

from __future__ import annotations

import contextlib
from typing import Optional

import typer

from mnist_pipeline import audit, data_versions, registry, retention
from mnist_pipeline.errors import PipelineError, StoreError, StoreFull
from mnist_pipeline.params import DEFAULT_MAX_REGRESSION
from mnist_pipeline.cli import interrupts
from mnist_pipeline.cli.common import (EXIT_BLOCKED, app, err, load_keras_quietly, one_line, refresh_dashboard,
                                       say, settings_and_store, warn)
from mnist_pipeline.runs import resolve_run

REASON = typer.Option("", "--reason", help="Why: recorded in the history.")
MIN_ACCURACY = typer.Option(None, "--min-accuracy", min=0.0, max=1.0, help="Threshold. Default: MNIST_MIN_ACCURACY.")
# What a command stopped after its change may leave behind: the refresh that follows it.
DASHBOARD_BEHIND = "the store's index.html may not show it yet"


def _decision(result: registry.PromotionResult, verb: str) -> int:
    """Say the decision as soon as it is written; its exit status, which a signal from now on
    no longer changes (production has changed, or the gate refused)."""
    status = 0 if result.promoted else EXIT_BLOCKED
    interrupts.finished(status, DASHBOARD_BEHIND)
    for warning in result.warnings:
        warn(warning)
    if result.promoted:
        say(f"{verb}: {result.production['run_id']} is in production ({result.reason})")
    else:
        err.print(result.reason, markup=False, highlight=False, soft_wrap=True)
    return status


@app.command()
def promote(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    reason: str = REASON,
    min_accuracy: Optional[float] = MIN_ACCURACY,
    max_regression: float = typer.Option(DEFAULT_MAX_REGRESSION, min=0.0, max=1.0,
                                         help="how far below production's accuracy the run may be"),
    allow_regression: bool = typer.Option(False, "--allow-regression",
                                          help="promote it however far below production (never below the threshold)"),
    force: bool = typer.Option(False, "--force", help="Replace a damaged production.json or production "
                               "model (its bytes are kept in the history record); the threshold still applies."),
    min_class_recall: Optional[float] = typer.Option(
        None, "--min-class-recall", min=0.0, max=1.0,
        help="Per-digit gate. Default: MNIST_MIN_CLASS_RECALL (unset: off)."),
    min_new_data_accuracy: Optional[float] = typer.Option(
        None, "--min-new-data-accuracy", min=0.0, max=1.0,
        help="New-data gate: accuracy on the holdout images of the data versions the run learned from. "
             "Default: off."),
) -> None:
    """Put a finished run's model in production, through the same gate as the flow. Its accuracy
    (each digit's recall, the new-data accuracy) is measured again: no file's word is taken for it."""
    settings, store = settings_and_store()
    run_id = resolve_run(store, run)
    load_keras_quietly()
    candidate = registry.stored_candidate(store, run_id, new_data=min_new_data_accuracy is not None)
    with interrupts.held():  # production.json and its history record: whole, a signal waits for them
        result = registry.promote(
            store, candidate, min_accuracy=settings.min_accuracy if min_accuracy is None else min_accuracy,
            max_regression=max_regression, allow_regression=allow_regression, note=reason, force=force,
            min_class_recall=settings.min_class_recall if min_class_recall is None else min_class_recall,
            min_new_data_accuracy=min_new_data_accuracy)
        status = _decision(result, "promoted")
    refresh_dashboard(settings, store)
    raise typer.Exit(status)


@app.command()
def rollback(reason: str = REASON, min_accuracy: Optional[float] = MIN_ACCURACY) -> None:
    """Put back the model that was in production before the current one was promoted (never one
    that was rolled back). Its hash, a safe-mode load and the threshold are checked first."""
    settings, store = settings_and_store()
    load_keras_quietly()
    with interrupts.held():  # as promote's; the target's checks (a second) are in the same registry call
        result = registry.rollback(store, min_accuracy=settings.min_accuracy if min_accuracy is None else min_accuracy,
                                   note=reason)
        status = _decision(result, "rolled back")
    refresh_dashboard(settings, store)
    raise typer.Exit(status)


@app.command()
def verify(deep: bool = typer.Option(False, "--deep", help="Hash every file, not only the small ones and "
                                     "the models production and rollback rely on.")) -> None:
    """Audit the store: exit 0 when clean, 1 with one line per problem."""
    _, store = settings_and_store()
    load_keras_quietly()
    result = audit.verify(store, deep=deep)
    checked = ", ".join(f"{n:,} {what}" for what, n in result.checked.items()) or "an empty store"
    for problem in result.problems:
        say(one_line(problem))
    if result.problems:
        err.print(f"{len(result.problems)} problem(s) in {store.url} (checked {checked})", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1)
    say(f"ok: {store.url} is consistent (checked {checked})")


@contextlib.contextmanager
def _full_disk_says_what_gc_needs():
    # The store's own hint for a full disk is "run gc": here gc is what needs the space.
    try:
        yield
    except StoreFull as exc:
        raise StoreError(f"{exc.problem}; free a few KB on that disk and run gc again (it writes a small "
                         "mark per run before deleting the run's files)") from None


@app.command()
def gc(
    keep_last: int = typer.Option(..., "--keep-last", min=1, help="Keep every file of the newest N runs."),
    keep_days: Optional[float] = typer.Option(None, "--keep-days", min=0.0, help="Also keep runs younger than D days."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be deleted; delete nothing."),
) -> None:
    """Delete the heavy files (model, predictions, plots) of older runs, and dataset images an
    ingest that died left without a version. Never production, a model rollback can return to, a
    manifest, metrics, a report, a history record or a dataset version."""
    settings, store = settings_and_store()
    todo = retention.plan(store, keep_last, keep_days)
    if todo.models_kept:
        warn("nothing is in production, so no model is deleted (any of them may still be promoted)")
    try:
        orphaned = data_versions.collectable_orphans(store)
    except PipelineError as exc:
        orphaned = []
        warn(f"orphaned dataset images are kept: {exc}")
    interrupts.unchanged("nothing was deleted; production unchanged")
    if dry_run:
        for info in orphaned:
            say(f"would delete {info.key} ({info.size:,} bytes; images of no dataset version)")
        for files in todo.collect.values():
            for info in files:
                say(f"would delete {info.key} ({info.size:,} bytes)")
        say(f"dry run: {sum(map(len, todo.collect.values()))} files of {len(todo.collect)} runs, "
            f"{todo.bytes / 2**20:.1f} MB would be freed; nothing was deleted")
        return
    # Marks, fence and deletions (retention.py) run whole: stopped between them, runs marked collected
    # would keep their files until the next gc. A signal waits for them, however long they take.
    with interrupts.held(), _full_disk_says_what_gc_needs():
        for info in orphaned:
            store.delete(info.key)
            say(f"deleted {info.key} ({info.size:,} bytes; images of no dataset version)")
        deleted, freed = retention.collect(store, todo, actor=registry.default_actor(), echo=say)
        stale = store.clean_stale_temp()
        for key in stale:
            say(f"deleted {key} (a stale temporary file)")
        interrupts.finished(0, DASHBOARD_BEHIND)
        say(f"deleted {deleted} files of {len(todo.collect)} runs, {freed / 2**20:.1f} MB freed"
            f"{f'; {len(stale)} stale temporary files' if stale else ''}")
    refresh_dashboard(settings, store)
