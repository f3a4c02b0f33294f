"""Error types. Transient ones are retried (task/flow retries); the rest fail the run at once."""


class PipelineError(Exception):
    """A failure with a one-line message that says what is wrong and what to do."""


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
    """The store refused for a reason retrying will not fix (credentials, missing bucket)."""


class StoreUnavailable(TransientError):
    """The store endpoint did not answer."""


class MirrorUnavailable(TransientError):
    """No mirror answered for a file (network errors only)."""


class NotFoundInStore(PipelineError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "not found"


class PreconditionFailed(PipelineError):
    """A conditional write was refused: someone else changed the object first (a lost race)."""


class UnsafeModel(PermanentError):
    """A stored model that Keras safe mode refuses to load (e.g. a Lambda layer)."""
