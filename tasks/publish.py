"""publish: what people and automations see of a decided run. The store's dashboard (index.html,
every run on one page) rebuilt; Prefect artifacts under stable keys (their descriptions carry
"0.9790 · promoted", so a key's timeline reads as a history; `mnist-report` links the run's
report and the dashboard), a Prefect event per decision (mnist.model.promoted /
mnist.promotion.blocked) to build automations on, and a notification (MNIST_NOTIFY_URL).

All of it after the decision, and none of it can change the decision: a failure here is a
warning in the log.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from mnist_pipeline import dashboard, keys, notify
from mnist_pipeline.redaction import redact, redact_url
from mnist_pipeline.run_inputs import ranges
from mnist_pipeline.registry import PromotionResult
from mnist_pipeline.settings import Settings
from mnist_pipeline.store import ArtifactStore
from tasks.report import plural
from tasks.stage import stage

EVENT_NAMES = {"promoted": "mnist.model.promoted", "blocked": "mnist.promotion.blocked",
               "failed": "mnist.run.failed"}


def report_pointer(store: ArtifactStore, run_id: str) -> tuple[str | None, str]:
    """(a URL a browser opens, or None; how a person gets to the report)."""
    key = keys.report(run_id)
    url = store.link(key)
    if url:
        return url, url
    return None, f"{store.location(key)} (or `mnist-pipeline report {run_id[:8]} --open`)"


def summary_markdown(run_id: str, params: dict, metrics: dict, outcome: notify.Outcome, report: str) -> str:
    low, high = metrics["test_accuracy_ci95"]
    verdict = {"promoted": "**Promoted** to production", "blocked": "**Blocked**: production unchanged"}
    return "\n".join([
        f"# MNIST run `{run_id}`",
        f"{verdict[outcome.kind]}. {outcome.reason}",
        "",
        "| | |", "|---|---|",
        f"| model | {params['model']}, {plural(params['epochs'], 'epoch')}, batch {params['batch_size']} |",
        f"| test accuracy | {metrics['test_accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) |",
        f"| threshold | {outcome.min_accuracy:.4f} |",
        f"| test loss | {metrics['test_loss']:.4f} |",
        f"| errors | {metrics['test_errors']} / {metrics['test_samples']} |",
        *new_data_rows(metrics),
        f"| production before | {outcome.production_run_id or 'none'} |",
        "",
        f"Report: {report}",
    ])


def new_data_rows(metrics: dict) -> list[str]:
    """The summary's row for the ingested holdout images, when there were any."""
    nd = metrics.get("new_data")
    if not nd:
        return []
    before = nd.get("production_before")
    was = f"production before {before['accuracy']:.4f}" if before else "nothing in production before"
    return [f"| new-data accuracy | {nd['accuracy']:.4f} ({was}) on {plural(nd['images'], 'holdout image')} of "
            f"{ranges(nd['versions'])} |"]


def publish_artifacts(store: ArtifactStore, run_id: str, params: dict, metrics: dict,
                      outcome: notify.Outcome) -> None:
    stamp = f"{metrics['test_accuracy']:.4f} · {outcome.kind}"
    _, pointer = report_pointer(store, run_id)
    create_markdown_artifact(redact(summary_markdown(run_id, params, metrics, outcome, pointer)),
                             key="mnist-run-summary", description=f"{stamp}: key numbers and the decision")
    rows = [{"digit": d, **m} for d, m in metrics["per_class"].items()]
    create_table_artifact(rows, key="mnist-per-class-metrics", description=f"{stamp}: per-class test metrics")
    link_artifact(store, keys.report(run_id), "mnist-report", f"report.html of {run_id}",
                  f"{stamp}: the full report, and the dashboard", open_with=f"mnist-pipeline report {run_id} --open",
                  also=(keys.DASHBOARD, "the dashboard: every run on one page", "mnist-pipeline dashboard --open"))


def link_artifact(store: ArtifactStore, key: str, artifact_key: str, link_text: str,
                  description: str | None = None, open_with: str = "",
                  also: tuple[str, str, str] | None = None) -> None:
    """A link artifact that opens `key` (presigned on S3: it expires in 7 days); with `also` (key,
    text, command), a markdown artifact with both links. On a folder store a file:// link does not
    open from the UI's http page: a note says where the files are instead, and `open_with`, the
    command that opens each."""
    url = store.link(key)
    if url and not also:
        create_link_artifact(redact_url(url), link_text=link_text, key=artifact_key, description=description)
        return
    if url:
        create_markdown_artifact(redact(f"[{link_text}]({url})\n\n[{also[1]}]({store.link(also[0])})"),
                                 key=artifact_key, description=description)
        return
    how = f"\n\nOpen it with `{open_with}`." if open_with else ""
    more = f"\n\n{also[1].capitalize()}: `{store.location(also[0])}` (`{also[2]}`)." if also else ""
    text = f"{link_text} is in the store's folder:\n\n`{store.location(key)}`{how}{more}"
    create_markdown_artifact(redact(text), key=artifact_key, description=description)


def emit_outcome_event(outcome: notify.Outcome, store_url: str | None, **payload) -> None:
    """mnist.model.promoted / mnist.promotion.blocked / mnist.run.failed, about this run
    (`payload`: more fields for the event's payload)."""
    related = [{"prefect.resource.id": f"prefect.flow-run.{outcome.run_id}",
                "prefect.resource.role": "flow-run"}]
    if outcome.production_run_id:
        related.append({"prefect.resource.id": f"mnist.run.{outcome.production_run_id}",
                        "prefect.resource.role": "production-before"})
    emit_event(event=EVENT_NAMES[outcome.kind],
               resource={"prefect.resource.id": f"mnist.run.{outcome.run_id}",
                         "prefect.resource.name": f"mnist run {outcome.run_id[:8]}"},
               related=related,
               payload={"run_id": outcome.run_id, "test_accuracy": outcome.test_accuracy,
                        "min_accuracy": outcome.min_accuracy, "production_run_id": outcome.production_run_id,
                        "reason": redact(outcome.reason), "store": store_url and redact_url(store_url),
                        **payload})


def outcome_of(run_id: str, result: PromotionResult, accuracy: float, min_accuracy: float,
               production_before: str | None) -> notify.Outcome:
    return notify.Outcome(run_id, "promoted" if result.promoted else "blocked", result.reason, accuracy,
                          min_accuracy, production_before)


@stage("publish")
def publish_task(store: ArtifactStore, settings: Settings, run_id: str, params: dict, metrics: dict,
                 outcome: notify.Outcome) -> list[str]:
    """The dashboard, artifacts, the event, the notification; returns the warnings (never raises)."""
    log, warnings = get_run_logger(), []
    steps = (("dashboard", lambda: dashboard.refresh(store, settings.min_accuracy)),
             ("artifacts", lambda: publish_artifacts(store, run_id, params, metrics, outcome)),
             ("event", lambda: emit_outcome_event(outcome, store.url)),
             ("notification", lambda: warnings.extend(notify.send(
                 settings, notify.Outcome(**{**outcome.__dict__, "report": report_pointer(store, run_id)[1]})))))
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            warnings.append(f"could not publish the {name}: {type(exc).__name__}: {exc}")
            log.warning(warnings[-1])
    return warnings
