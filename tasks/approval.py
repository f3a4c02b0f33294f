"""approval (`require_approval`): a person's go-ahead before a model that passed the gate reaches
production. The run's files and manifest are stored first (the report says it is waiting); then a
child flow run, `approve-<run id>` of the flow `mnist-approval`, sends the notification
(MNIST_NOTIFY_URL, with the link to its page in the Prefect UI) and pauses with a typed form
(Prefect's pause_flow_run(wait_for_input=...)): approve or reject, a note, who decides. Resumed
with "approve", the promotion goes ahead through the gate as usual, the note and the approver in
its history record; "reject", or no answer within `approval_timeout`, and the run is Blocked with
that reason. The report and manifest are restated with the verdict.

Why a child flow run, and not the run itself: Prefect 3.8 releases a deployment's concurrency slot
when its run leaves Running, for Paused too, and revokes its lease; the run's own process, which
goes on renewing that lease, then cancels itself (Crashed) minutes into the wait, as it does for
AwaitingRetry (PrefectHQ/prefect#20251). So the run stays Running and keeps its slot (the next
scheduled run waits behind it), and the child, which holds no lease, is the one that is Paused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, State
from pydantic import Field, ValidationError

from mnist_pipeline import notify
from mnist_pipeline.errors import raising_redacted
from mnist_pipeline.redaction import redact
from mnist_pipeline.registry import BLOCKED, Check, GateDecision
from mnist_pipeline.settings import load_settings

APPROVAL_FLOW = "mnist-approval"


class ApprovalForm(RunInput):
    """What the Prefect UI asks for on the paused run's Resume button (validated by the server)."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: promote this model to production; reject: keep production as it is.")
    note: str = Field("", max_length=2000, description="Why: kept in the registry's history and the report.")
    approver: str = Field(min_length=1, max_length=200, description="Who decides: your name, kept with the decision.")


@dataclass(frozen=True)
class Verdict:
    """The person's answer, or its absence."""

    approved: bool
    reason: str  # one line, as the run's state and its history record say it
    by: str | None = None
    note: str = ""
    at: str = ""  # when it was decided, ISO 8601 UTC

    def record(self) -> dict:
        """What it adds to the decision's history record."""
        return {"approval": {"approved": self.approved, "by": self.by, "note": self.note, "at": self.at}}

    def check(self) -> Check:
        return Check("approval", self.reason.removeprefix(BLOCKED), self.approved)


def duration(seconds: int) -> str:
    """"90 s", "5 min", "24 h": how long a person had."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def poll_interval(timeout_s: int) -> int:
    """How often the paused run asks the server whether it was answered: every 10 s, or more
    often for a short wait."""
    return max(1, min(10, timeout_s // 30))


def verdict_of(form: ApprovalForm) -> Verdict:
    """The answer as the run's state, its history record and report keep it: redacted, as
    everything stored (a note may quote a link with its password)."""
    at = datetime.now(timezone.utc).isoformat()
    by, note = redact(form.approver), redact(form.note)
    said = f": {note}" if note else ""
    if form.decision == "approve":
        return Verdict(True, f"approved by {by}{said}", by, note, at)
    return Verdict(False, f"{BLOCKED}rejected by {by}{said}", by, note, at)


def _forget_answer(flow_run_id, form: ApprovalForm) -> None:
    """The form as typed stays in Prefect's database until deleted: the verdict keeps it redacted."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_flow_run_input(flow_run_id, form.metadata.key)


def awaiting(decision: GateDecision, timeout_s: int) -> GateDecision:
    """What the stored report and manifest say while the run waits: not promoted (yet)."""
    until = (datetime.now(timezone.utc) + timedelta(seconds=timeout_s)).strftime("%Y-%m-%d %H:%M UTC")
    waiting = Check("approval", f"waiting for a person's approval in the Prefect UI, until {until}", False)
    return dataclasses.replace(decision, promote=False, reason=f"waiting for approval until {until}",
                               checks=(*decision.checks, waiting),
                               explanation=f"{decision.explanation}; waiting for a person's approval until {until}")


def with_verdict(decision: GateDecision, verdict: Verdict) -> GateDecision:
    check = verdict.check()
    return dataclasses.replace(
        decision, promote=decision.promote and verdict.approved,
        reason=decision.reason if verdict.approved else verdict.reason, checks=(*decision.checks, check),
        explanation=f"{decision.explanation}; {check.text}" if verdict.approved else check.text)


def told(gated: GateDecision, promoted: GateDecision | None, verdict: Verdict | None) -> GateDecision:
    """The decision the report and manifest tell in the end: the promotion's own when it decided
    otherwise than the gate (production changed meanwhile), with the person's verdict."""
    final = promoted if promoted and promoted.promote != gated.promote else gated
    return with_verdict(final, verdict) if verdict else final


def _take_back(flow_run_id) -> None:
    """After the wait timed out the server refuses to let the paused run go on (it would end it
    Failed): the run itself moves back to Running, to end Completed with its verdict."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(message="no approval in time"), force=True)


def form_description(run_id: str, accuracy: float, reason: str, report: str, until: str) -> str:
    return (f"**MNIST run `{run_id}`** passed the gate: test accuracy {accuracy:.4f} ({reason}).\n\n"
            f"Report: {report}\n\nApprove to promote it to production, or reject it, by {until}; "
            "with no answer by then, the run is blocked.")


@flow(name=APPROVAL_FLOW, flow_run_name="approve-{run_id}", retries=0, validate_parameters=False)
def approval_flow(run_id: str, test_accuracy: float, min_accuracy: float, reason: str, report: str,
                  production_run_id: str | None, timeout_s: int) -> State:
    """Ask a person, wait for the answer (paused), and end Completed named Approved, Rejected or
    Expired, the verdict as its data."""
    with raising_redacted():  # its state is stored like the run's, and a library's error names URLs
        log, me = get_run_logger(), FlowRunContext.get().flow_run.id
        until = (datetime.now(timezone.utc) + timedelta(seconds=timeout_s)).strftime("%Y-%m-%d %H:%M:%S UTC")
        from prefect.utilities.urls import url_for

        page = url_for("flow-run", obj_id=me) or f"flow run approve-{run_id}"
        for warning in notify.send(load_settings(), notify.Outcome(
                run_id, "approval", reason, test_accuracy, min_accuracy, production_run_id, report,
                action=f"Approve or reject it by {until} in the Prefect UI (Resume): {page}")):
            log.warning(warning)
        log.info("waiting for a person's approval until %s: %s", until, page)
        form = ApprovalForm.with_initial_data(
            description=form_description(run_id, test_accuracy, reason, report, until))
        now = datetime.now(timezone.utc).isoformat
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=timeout_s,
                                    poll_interval=poll_interval(timeout_s), key="approval")
            verdict = verdict_of(answer)
            name = "Approved" if verdict.approved else "Rejected"
            try:
                _forget_answer(me, answer)
            except Exception as exc:  # the verdict stands; the raw answer stays in Prefect's database
                log.warning("the approval form's answer could not be deleted from Prefect (%s: %s)",
                            type(exc).__name__, exc)
        except FlowPauseTimeout:
            _take_back(me)
            verdict = Verdict(False, f"{BLOCKED}no approval within {duration(timeout_s)}", at=now())
            name = "Expired"
        except ValidationError:  # resumed without the form filled in
            verdict = Verdict(False, f"{BLOCKED}resumed without an answer (approve or reject)", at=now())
            name = "Rejected"
        log.info("approval: %s", verdict.reason)
        return Completed(name=name, message=verdict.reason, data=dataclasses.asdict(verdict))


def await_approval(run_id: str, decision: GateDecision, test_accuracy: float, report: str,
                   timeout_s: int) -> Verdict:
    """The person's verdict on a run that passed the gate (blocks up to `timeout_s`)."""
    state = approval_flow(run_id, test_accuracy, decision.min_accuracy, decision.reason, report,
                          decision.production_run_id, timeout_s, return_state=True)
    return Verdict(**state.result())
