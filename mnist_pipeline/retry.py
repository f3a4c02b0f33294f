"""Prefect retry condition: retry what `errors.is_transient` calls transient, nothing else."""

from mnist_pipeline.errors import is_transient


def retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return is_transient(exc)
    return False
