"""Missed schedules are not replayed. When the process that runs a deployment (`serve.py`, a
worker) was down across several scheduled times, Prefect keeps each missed run, Late, and runs
them one after another once the process is back: nights of training on the same data. Instead,
each scheduled run first asks Prefect's API whether a newer run of its deployment is already due
(scheduled, pending or running, or already finished well); if so it ends Cancelled, naming that
run, and only the newest trains. Runs started by hand or by an event are never superseded."""

from __future__ import annotations

from datetime import datetime, timezone

# A newer run that failed or was cancelled does not stand in for an older one.
NOT_SUPERSEDING = ("FAILED", "CRASHED", "CANCELLED", "CANCELLING")


def newer_due_run(client, flow_run, now: datetime | None = None):
    """The newest run of `flow_run`'s deployment expected after it and already due at `now`, or
    None; always None for a run the scheduler did not create."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId,
                                                FlowRunFilterExpectedStartTime, FlowRunFilterId,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    if flow_run.deployment_id is None or not flow_run.auto_scheduled or flow_run.expected_start_time is None:
        return None
    now = now or datetime.now(timezone.utc)
    found = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[flow_run.deployment_id]),
            id=FlowRunFilterId(not_any_=[flow_run.id]),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=flow_run.expected_start_time, before_=now),
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType(s) for s in NOT_SUPERSEDING]))),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    newer = [r for r in found if r.expected_start_time > flow_run.expected_start_time]
    return newer[0] if newer else None


def superseded_message(newer) -> str:
    due = newer.expected_start_time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"superseded by run {newer.id} ({newer.name}, due {due}): a missed scheduled run is not "
            "replayed, the newest one runs")
