"""Notifications through Apprise (MNIST_NOTIFY_URL: one or more Apprise URLs, comma-separated).

Blocked and failed runs, and runs waiting for a person's approval, are sent; promotions too with
MNIST_NOTIFY_ON=all. A notification that cannot be delivered is a warning, never a change to the
run's outcome. Apprise URLs often carry a token or password, so they are named only redacted
(mnist_pipeline/redaction.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mnist_pipeline.redaction import redact, redact_url
from mnist_pipeline.settings import Settings

log = logging.getLogger("mnist_pipeline.notify")


@dataclass(frozen=True)
class Outcome:
    run_id: str
    kind: str  # promoted | blocked | failed | approval (waiting for one)
    reason: str
    test_accuracy: float | None = None
    min_accuracy: float | None = None
    production_run_id: str | None = None
    report: str | None = None  # a link, or where the report is and the command that opens it
    action: str | None = None  # what the reader is asked to do, and where (an approval's form)


SAID = {"approval": "waiting for approval"}  # how a kind reads in a title, when not its own name


def wanted(settings: Settings, kind: str) -> bool:
    return bool(settings.notify_urls) and (kind != "promoted" or settings.notify_on == "all")


def message(outcome: Outcome) -> tuple[str, str]:
    """(title, body): short, and nothing in it that is a credential."""
    said = SAID.get(outcome.kind, outcome.kind)
    title = f"mnist-pipeline: run {outcome.run_id[:8]} {said}"
    lines = [f"Run {outcome.run_id}: {said.upper()}."]
    if outcome.test_accuracy is not None and outcome.min_accuracy is not None:
        verdict = ">=" if outcome.test_accuracy >= outcome.min_accuracy else "<"
        lines.append(f"Test accuracy {outcome.test_accuracy:.4f} {verdict} threshold {outcome.min_accuracy:.4f}.")
    lines.append(f"Reason: {outcome.reason}")
    if outcome.kind != "promoted":
        lines.append(f"Production: unchanged ({outcome.production_run_id or 'nothing in production'}).")
    if outcome.report:
        lines.append(f"Report: {outcome.report}")
    if outcome.action:
        lines.append(outcome.action)
    return title, redact("\n".join(lines))


def send(settings: Settings, outcome: Outcome) -> list[str]:
    """Send to every configured URL; returns one warning per URL that failed (also logged)."""
    if not wanted(settings, outcome.kind):
        return []
    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL)  # its messages may quote the URL
    title, body = message(outcome)
    kind = {"promoted": apprise.NotifyType.SUCCESS, "blocked": apprise.NotifyType.WARNING,
            "approval": apprise.NotifyType.INFO}.get(outcome.kind, apprise.NotifyType.FAILURE)
    warnings = []
    for secret in settings.notify_urls:
        url = secret.get_secret_value()
        sender = apprise.Apprise()
        try:
            accepted = sender.add(url)
            delivered = accepted and sender.notify(body=body, title=title, notify_type=kind)
        except Exception as exc:  # a notifier's bug must not change the run's outcome either
            delivered, accepted = False, f"{type(exc).__name__}"
        if not delivered:
            why = "not an Apprise URL" if accepted is False else "not delivered"
            warnings.append(f"notification to {redact_url(url)} failed ({why}); the run's outcome is unchanged")
            log.warning(warnings[-1])
    return warnings
