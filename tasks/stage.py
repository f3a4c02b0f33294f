"""A pipeline stage as a Prefect task: `@stage("fetch", retries=...)` is `@task` with the
pipeline's defaults (no result cache: a stage's inputs are arrays and stores, not keys worth
hashing) that also records the stage's wall time and the process's peak memory after it, for the
run's manifest and report, and redacts any URL in the message of an exception nobody foresaw
(mnist_pipeline/errors.py `raising_redacted`) before Prefect stores it as the task's state."""

from __future__ import annotations

import functools
import resource
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.errors import raising_redacted

_timings: ContextVar[dict | None] = ContextVar("mnist_stage_timings", default=None)


@contextmanager
def recording_timings() -> Iterator[dict]:
    """The stages run inside record into the dict yielded: stage -> seconds, and under
    "peak_rss_mb_after" stage -> MB (which stage raises the high-water mark)."""
    timings: dict = {}
    token = _timings.set(timings)
    try:
        yield timings
    finally:
        _timings.reset(token)


def _record(name: str, seconds: float) -> None:
    timings = _timings.get()
    if timings is not None:
        timings[name] = round(timings.get(name, 0.0) + seconds, 3)  # a retried stage: every attempt
        timings.setdefault("peak_rss_mb_after", {})[name] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def stage(name: str, **task_options):
    def decorate(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                with raising_redacted():
                    return fn(*args, **kwargs)
            finally:
                _record(name, time.perf_counter() - started)

        return task(name=name, **{"cache_policy": NO_CACHE, **task_options})(timed)
    return decorate
