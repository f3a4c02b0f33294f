"""Error types, and the one place that decides what is worth retrying.

Transient errors (a connection refused, a timeout, a 5xx, throttling) are retried by tasks and by
the flow; permanent ones (permission, a read-only or full file system, bad data, bad credentials,
a damaged registry) fail the run at once: retrying would fail the same way, only later.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager

from mnist_pipeline.redaction import redact


class PipelineError(Exception):
    """A failure with a one-line message that says what is wrong and what to do. Any URL in it
    is redacted where it is made: the message reaches logs, run states and the Prefect UI."""

    def __init__(self, *args: object):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class PermanentError(PipelineError):
    """Retrying cannot help: bad data, bad configuration, a diverged training."""


class TransientError(PipelineError):
    """Network or storage hiccup: worth retrying with backoff."""


class ConfigError(PermanentError):
    pass


class DatasetError(PermanentError):
    pass


class TrainingDiverged(PermanentError):
    pass


class StoreError(PermanentError):
    """The store refused for a reason retrying will not fix (credentials, permissions, no space)."""


class StoreFull(StoreError):
    """No space left on the folder store's disk (or quota); `problem` says what failed, no hint."""

    def __init__(self, problem: str, hint: str):
        super().__init__(f"{problem}; {hint}")
        self.problem, self.hint = problem, hint

    def __reduce__(self):  # pickled across Dask and Prefect as its two parts, not its one message
        return type(self), (self.problem, self.hint)


class StoreUnavailable(TransientError):
    """The store endpoint did not answer in time."""


class MirrorUnavailable(TransientError):
    """No mirror answered for a file (network errors only)."""


class ClusterUnavailable(TransientError):
    """The Dask scheduler (MNIST_DASK_ADDRESS) did not answer in time."""


class RegistryError(PermanentError):
    """A registry operation that cannot proceed: nothing to roll back to, an incomplete run, ..."""


class DamagedRegistry(RegistryError):
    """A registry object (production.json, a history record, a model it names) is malformed,
    missing or does not match its recorded hash. Reported, never silently overwritten."""


class NotFoundInStore(PipelineError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "not found"


class PreconditionFailed(PipelineError):
    """A conditional write was refused: someone else changed the object first (a lost race)."""


class UnsafeModel(PermanentError):
    """A stored model that Keras safe mode refuses to load (e.g. a Lambda layer)."""


# errno values that no retry can fix: the disk is full, read-only, or not ours to write.
PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                    errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG}


def is_transient(exc: BaseException) -> bool:
    """The one retry rule, for tasks and for the flow."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PipelineError):
        return False
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno not in PERMANENT_ERRNOS
    return isinstance(exc, (ConnectionError, TimeoutError))


def is_expected(exc: BaseException) -> bool:
    """A failure the pipeline foresaw and described in one line: no traceback needed."""
    return isinstance(exc, PipelineError)


def os_error_message(exc: OSError) -> str:
    """`No space left on device` rather than `[Errno 28] No space left on device: '/x/.tmp-..'`."""
    return exc.strerror or type(exc).__name__


def redacted(exc: BaseException) -> BaseException:
    """`exc` with any URL in its message redacted, for an exception the pipeline did not foresee
    (a library's, a bug's): its message becomes a Prefect state message and a stored result. Its
    arguments and its usual text attributes are redacted in place, so its type (and what
    `is_transient` says of it) and its traceback stay; an exception whose text still names a
    secret after that is replaced by a RuntimeError of its redacted text."""
    try:  # never let the redaction hide the exception it redacts
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        for name in ("strerror", "filename", "filename2", "reason", "msg", "url"):
            value = getattr(exc, name, None)
            if isinstance(value, str) and redact(value) != value:
                setattr(exc, name, redact(value))
        text = str(exc)
    except Exception:
        text = ""
    if redact(text) == text:
        return exc
    return RuntimeError(f"{type(exc).__name__}: {redact(text)}")


@contextmanager
def raising_redacted():
    """What escapes the block leaves with its URLs redacted (`redacted`): around code whose
    exceptions Prefect stores as a task's or a flow's state."""
    try:
        yield
    except Exception as exc:
        clean = redacted(exc)
        if clean is exc:
            raise
        raise clean from None
