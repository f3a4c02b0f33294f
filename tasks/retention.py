"""retention: with MNIST_KEEP_LAST set, the flow runs `mnist-pipeline gc --keep-last N` after its
decision (mnist_pipeline.retention). A failure here is a warning: the run's outcome is decided."""

from __future__ import annotations

from prefect import get_run_logger

from mnist_pipeline import retention
from mnist_pipeline.store import ArtifactStore
from tasks.stage import stage


@stage("retention")
def retention_task(store: ArtifactStore, keep_last: int, run_id: str) -> list[str]:
    log = get_run_logger()
    try:
        todo = retention.plan(store, keep_last)
        deleted, freed = retention.collect(store, todo, actor=f"flow-run:{run_id}", echo=log.info)
        removed = store.clean_stale_temp()
    except Exception as exc:
        message = f"retention (MNIST_KEEP_LAST={keep_last}) failed: {type(exc).__name__}: {exc}"
        log.warning(message)
        return [message]
    log.info("retention: kept the newest %d runs, production and its rollback stack; deleted %d files "
             "of %d runs (%.1f MB freed)%s", keep_last, deleted, len(todo.collect), freed / 2**20,
             f", {len(removed)} stale temporary files" if removed else "")
    return []
