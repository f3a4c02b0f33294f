"""What the registry's objects hold: `registry/production.json` (with its rollback stack) and a
history record, validated strictly; anything else is a one-line DamagedRegistry naming the key."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, ValidationError, model_validator

from mnist_pipeline import keys
from mnist_pipeline.errors import DamagedRegistry

ROLLBACK_DEPTH = 20  # promotions that rollback can undo; older models may be collected by gc
VERIFY_HINT = "run `mnist-pipeline verify` for the full picture"

RunId = Annotated[StrictStr, Field(pattern=keys.RUN_ID.pattern)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Accuracy = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]


class StackEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    run_id: RunId
    model_key: StrictStr
    model_sha256: Sha256
    test_accuracy: Accuracy


ROLLBACK_FROM = "rollback from "  # production.json's reason after a rollback, then the run it left


class Production(BaseModel):
    """registry/production.json."""

    model_config = ConfigDict(extra="allow", strict=True)
    run_id: RunId
    test_accuracy: Accuracy
    model_key: StrictStr
    model_sha256: Sha256
    promoted_at: StrictStr
    promoted_by: StrictStr = ""
    reason: StrictStr = ""
    previous_run_id: Optional[RunId] = None  # the top of the stack, for people reading the file
    stack: list[StackEntry] = []
    history_key: Optional[StrictStr] = None

    @model_validator(mode="after")
    def _model_key_is_the_runs(self):
        if self.model_key != keys.model(self.run_id):
            raise ValueError(f"model_key {self.model_key!r} is not {keys.model(self.run_id)!r}")
        return self

    def entry(self) -> StackEntry:
        return StackEntry(run_id=self.run_id, model_key=self.model_key,
                          model_sha256=self.model_sha256, test_accuracy=self.test_accuracy)

    @property
    def rolled_back_from(self) -> str | None:
        """The run a rollback took production away from, when that is how this model got there."""
        return self.reason.removeprefix(ROLLBACK_FROM) if self.reason.startswith(ROLLBACK_FROM) else None


class HistoryRecord(BaseModel):
    """One decision under registry/history/."""

    model_config = ConfigDict(extra="allow", strict=True)
    decision: Literal["promoted", "blocked", "rollback"]
    run_id: RunId
    recorded_at: StrictStr
    test_accuracy: Optional[Accuracy] = None
    reason: StrictStr = ""
    actor: StrictStr = ""
    note: StrictStr = ""
    source: StrictStr = "cli"
    production_before: Optional[RunId] = None


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where + ': ' if where else ''}{err['msg']}"


# The way out of a damaged production.json, named where it is met (docs/registry.md).
FORCE_HINT = "`mnist-pipeline promote RUN --force` replaces it, keeping its bytes in the history"


def _parse(model: type[BaseModel], key: str, data: bytes):
    hint = f"{VERIFY_HINT}; {FORCE_HINT}" if key == keys.PRODUCTION else VERIFY_HINT
    try:
        return model.model_validate(json.loads(data))
    except json.JSONDecodeError as exc:
        raise DamagedRegistry(f"{key} is damaged: not JSON ({exc.msg} at byte {exc.pos}); {hint}") from None
    except ValidationError as exc:
        raise DamagedRegistry(f"{key} is damaged: {_problem(exc)}; {hint}") from None


def parse_production(data: bytes) -> Production:
    return _parse(Production, keys.PRODUCTION, data)


def parse_history_record(key: str, data: bytes) -> HistoryRecord:
    return _parse(HistoryRecord, key, data)
