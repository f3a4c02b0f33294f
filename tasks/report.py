"""report: a self-contained report.html (images embedded, readable offline) and the Prefect UI
artifacts (key numbers, per-class table, link to the report) under stable keys."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_pipeline.registry import GateDecision

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def render_report(run_id: str, params: dict, profile: dict, metrics: dict, training: dict,
                  decision: GateDecision, plots: dict[str, bytes]) -> bytes:
    """`training`: {"seconds": .., "weights": "which weights the model holds"}."""
    images = [(name, "data:image/png;base64," + base64.b64encode(png).decode())
              for name, png in plots.items()]
    html = _ENV.get_template("report.html.j2").render(
        run_id=run_id, params=params, profile=profile, metrics=metrics, decision=decision,
        training=training, images=images,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return html.encode()


def summary_markdown(run_id: str, params: dict, metrics: dict, decision: GateDecision,
                     report_url: str) -> str:
    low, high = metrics["test_accuracy_ci95"]
    verdict = "**PROMOTED**" if decision.promote else "**NOT PROMOTED**"
    return "\n".join([
        f"# MNIST run `{run_id}`",
        f"{verdict}: {decision.reason}",
        "",
        "| | |", "|---|---|",
        f"| model | {params['model']}, {params['epochs']} epochs, batch {params['batch_size']} |",
        f"| test accuracy | {metrics['test_accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) |",
        f"| test loss | {metrics['test_loss']:.4f} |",
        f"| errors | {metrics['test_errors']} / {metrics['test_samples']} |",
        f"| threshold | {decision.min_accuracy:.3f} |",
        f"| production before | {decision.production_run_id or 'none'} |",
        "",
        f"[Full report]({report_url})",
    ])


def publish_artifacts(run_id: str, params: dict, metrics: dict, decision: GateDecision,
                      report_url: str) -> None:
    create_markdown_artifact(summary_markdown(run_id, params, metrics, decision, report_url),
                             key="mnist-run-summary", description="Key numbers and gate decision")
    rows = [{"digit": d, **m} for d, m in metrics["per_class"].items()]
    create_table_artifact(rows, key="mnist-per-class-metrics", description="Per-class test metrics")
    create_link_artifact(report_url, link_text=f"report.html of {run_id}", key="mnist-report",
                         description="Self-contained HTML report (presigned URL on S3: expires)")


@task(name="report", cache_policy=NO_CACHE)
def report_task(run_id: str, params: dict, profile: dict, metrics: dict, training: dict,
                decision: GateDecision, plots: dict[str, bytes]) -> bytes:
    return render_report(run_id, params, profile, metrics, training, decision, plots)


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_task(run_id: str, params: dict, metrics: dict, decision: GateDecision, report_url: str) -> None:
    publish_artifacts(run_id, params, metrics, decision, report_url)
