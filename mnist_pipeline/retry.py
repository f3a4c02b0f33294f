"""Prefect retry condition: retry network/storage hiccups, never bad data or bad settings."""

from mnist_pipeline.errors import TransientError


def retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False
