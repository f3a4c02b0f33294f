"""What a search leaves behind: a record per trial, search.json and a self-contained report
(runs/<id>/tuning/), and the Prefect UI's trials table and report link."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import jinja2
from prefect.artifacts import create_table_artifact

from mnist_pipeline import keys
from mnist_pipeline.search_space import dimensions_for, space_table
from tasks.publish import link_artifact
from tasks.trial import COMPLETED

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def store_trial_record(store, run_id: str, record: dict) -> str:
    key = keys.tuning_trial(run_id, record["trial_id"])
    store.put(key, json.dumps(record, indent=1, sort_keys=True).encode(), "application/json")
    return key


def table_rows(records: list[dict], model_kind: str) -> list[dict]:
    """One row per trial for the Prefect table artifact and the report."""
    names = [d.name for d in dimensions_for(model_kind)]
    rows = []
    for r in sorted(records, key=lambda r: r["trial_id"]):
        row = {"trial": r["trial_id"], "status": r["status"],
               "val_accuracy": None if r["val_accuracy"] is None else round(r["val_accuracy"], 4),
               "seconds": r["seconds"], "epochs": r.get("epochs"), "worker": r["worker"]}
        row.update({n: _fmt(r["hyperparameters"].get(n)) for n in names})
        row["error"] = r["error"] or ""
        rows.append(row)
    return rows


def _fmt(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def score_plots(records: list[dict], model_kind: str) -> bytes:
    """Validation accuracy against each hyperparameter, one panel each; failed trials as red
    crosses on the floor of the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = dimensions_for(model_kind)
    cols = min(3, len(dims))
    rows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    done = [r for r in records if r["status"] == COMPLETED]
    failed = [r for r in records if r["status"] != COMPLETED]
    floor = min((r["val_accuracy"] for r in done), default=0.0)
    for ax, d in zip(axes.ravel(), dims):
        ax.scatter([r["hyperparameters"].get(d.name) for r in done], [r["val_accuracy"] for r in done],
                   color="tab:blue", label="completed")
        if failed:
            ax.scatter([r["hyperparameters"].get(d.name) for r in failed], [floor] * len(failed),
                       marker="x", color="tab:red", label="failed")
        # The whole declared range on the axis: it shows which part of the space was tried.
        if d.kind == "choice" and min(d.values) > 0:  # powers of two: a log axis spaces them evenly
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(d.values), [str(v) for v in d.values])
            ax.set_xlim(min(d.values) / 1.3, max(d.values) * 1.3)
        elif d.kind == "choice":  # counts from 0 (pixels of shift): a linear axis
            ax.set_xticks(list(d.values), [str(v) for v in d.values])
            ax.set_xlim(min(d.values) - 0.5, max(d.values) + 0.5)
        else:
            if d.log:
                ax.set_xscale("log")
            pad = 0 if d.log else (d.high - d.low) * 0.05
            ax.set_xlim(d.low * (0.8 if d.log else 1) - pad, d.high * (1.25 if d.log else 1) + pad)
        ax.set(xlabel=d.name, ylabel="validation accuracy")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(dims):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_search_report(run_id: str, summary: dict, records: list[dict]) -> str:
    """A self-contained HTML page: the search settings, the trials table, score against each
    hyperparameter, and the search space."""
    kind = summary["model"]
    settings = [{"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                for k, v in summary.items() if k not in ("best", "space")]
    return _ENV.get_template("search_report.html.j2").render(
        run_id=run_id, best=summary.get("best"), settings=settings, trials=table_rows(records, kind),
        plot=base64.b64encode(score_plots(records, kind)).decode(), space=space_table(kind))


def search_summary(*, algorithm: str, model: str, trials: int, max_parallel: int, epochs: int,
                   seed: int, cluster: str, workers: list[str], seconds: float,
                   records: list[dict], best: dict | None, warmup_seconds: float | None = None) -> dict:
    """`seconds` is the search from the first trial submitted to the last one ended;
    `warmup_seconds` the workers' start-up before it (TensorFlow import, data load)."""
    completed = sum(r["status"] == COMPLETED for r in records)
    return {"algorithm": algorithm, "model": model, "trials_requested": trials,
            "trials_run": len(records), "trials_completed": completed,
            "trials_failed": len(records) - completed, "max_parallel": max_parallel,
            "epochs": epochs, "seed": seed, "cluster": cluster, "workers": workers,
            "warmup_seconds": warmup_seconds, "seconds": round(seconds, 3),
            "trials_per_minute": round(60 * len(records) / seconds, 3) if seconds > 0 else None,
            "best": best, "space": space_table(model)}


def publish_search(store, run_id: str, summary: dict, records: list) -> None:
    """The search's summary and report in the store, and the trials table in the Prefect UI."""
    store.put(keys.tuning_search(run_id),
              json.dumps({**summary, "trials": records}, indent=1).encode(), "application/json")
    report_key = keys.tuning_report(run_id)
    store.put(report_key, render_search_report(run_id, summary, records).encode(), "text/html")
    rows = table_rows(records, summary["model"])
    if rows:
        create_table_artifact(rows, key="mnist-tuning-trials",
                              description=f"{summary['trials_completed']}/{summary['trials_run']} trials "
                                          f"completed ({summary['algorithm']}, {summary['model']})")
    link_artifact(store, report_key, "mnist-tuning-report", "tuning report")
