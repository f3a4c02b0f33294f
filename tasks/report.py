"""report: a self-contained report.html (images embedded, readable offline) and the Prefect UI
artifacts (key numbers, per-class table, link to the report) under stable keys."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from mnist_pipeline.registry import GateDecision
from tasks.plots import plot_captions
from tasks.stage import stage

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def plural(count: int | float, noun: str, plural_form: str | None = None) -> str:
    """"1 epoch", "12 epochs", "10,000 images"."""
    shown = f"{count:,}" if isinstance(count, int) else f"{count:g}"
    return f"{shown} {noun if count == 1 else (plural_form or noun + 's')}"


_ENV.filters["plural"] = plural
# What the report calls each of the gate's checks (mnist_pipeline/registry/gate.py `Check.rule`).
CHECK_NAMES = {"threshold": "Threshold", "champion": "Against production", "new_data": "New data",
               "class_recall": "Per-digit gate", "approval": "Approval"}


@dataclass
class ReportInput:
    """Everything report.html shows about one run (see render_report)."""

    run_id: str
    params: dict  # the run's parameters; params["min_accuracy"] may be None (then decision["min_accuracy"] is what applied)
    profile: dict  # validate's data profile (tasks/validate.py)
    metrics: dict  # metrics.json content (tasks/evaluate.py)
    history: dict  # per-epoch lists: loss, accuracy, val_loss, val_accuracy
    training: dict  # {"seconds": float, "weights": str, "model_summary": str (Keras model.summary text), "parameters": int}
    decision: dict  # decision_view(): the gate's decision (registry.gate.GateDecision.to_json()) and "promoted"
    provenance: dict  # {"git_commit": str|None, "versions": {name: version}, "dataset_sha256": {file: sha}, "timings_s": {stage: seconds}, "started_at": iso str}
    plots: dict  # file name -> PNG bytes (from tasks.plots.render_plots)
    # {"production_run_id", "production_accuracy", "candidate_accuracy", "only_candidate_right": int,
    #  "only_production_right": int, "mcnemar_p": float, "per_class_recall": {"0": {"production": f, "candidate": f}, ...}}
    comparison: dict | None = None


def render_report(inp: ReportInput) -> bytes:
    """report.html of one run, UTF-8: the gate's verdict and why, the comparison with the model it
    would replace (when there was one), the plots with captions, per-class metrics, the data, and
    what it takes to reproduce the run (commit, versions, dataset hashes, timings, model summary).

    Self-contained: the PNGs are embedded as data: URIs, no script, no external URL, so it reads
    the same offline, from a bucket or as a printout. Every threshold and comparison with it is
    shown with 4 decimals, and the threshold is the one applied (decision["min_accuracy"]), not
    the parameter (None when the default applied)."""
    known = [name for name in plot_captions if name in inp.plots]
    figures = {name: {"uri": _data_uri(inp.plots[name]), "caption": plot_captions[name]} for name in known}
    extra = [{"name": name, "uri": _data_uri(png), "caption": name}
             for name, png in inp.plots.items() if name not in plot_captions]
    html = _ENV.get_template("report.html.j2").render(
        inp=inp, m=inp.metrics, figures=figures, extra_figures=extra,
        verdict=verdict(inp.decision), checks=inp.decision.get("checks") or [], check_names=CHECK_NAMES,
        comparison=comparison_view(inp.comparison, inp.metrics.get("per_class")) if inp.comparison else None,
        parameters=parameter_rows(inp.params, inp.decision["min_accuracy"], inp.decision.get("min_class_recall")),
        timings=timing_rows(inp.provenance.get("timings_s") or {}),
        epochs_run=len(inp.history.get("loss", [])),
        started=_readable_time(inp.provenance.get("started_at")),
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return html.encode()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _readable_time(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def verdict(decision: dict) -> dict:
    """One headline and one reason: the gate's own explanation (mnist_pipeline/registry/gate.py),
    or, for a decision the gate did not make (a race lost at the conditional write), its reason
    as given, without the "promotion blocked:" that the headline already says."""
    promoted = bool(decision["promoted"])
    reason = decision.get("explanation") or re.sub(r"^\s*promotion blocked:\s*", "", decision.get("reason") or "",
                                                   flags=re.I)
    return {"promoted": promoted,
            "headline": "Promoted to production" if promoted else "Not promoted: production unchanged",
            "reason": reason}


def comparison_view(comparison: dict, per_class: dict | None = None) -> dict:
    """The comparison with production, ready to show: per-class rows marked better/worse/same
    (with the change in images when `per_class` gives each digit's test images), the digits that
    got better or worse (largest change first), McNemar's verdict."""
    rows = []
    for digit, recall in sorted(comparison["per_class_recall"].items(), key=lambda kv: int(kv[0])):
        delta = recall["candidate"] - recall["production"]
        support = (per_class or {}).get(digit, {}).get("support")
        images = round(delta * support) if support else None
        same = abs(delta) < 1e-9 or images == 0
        change = "same" if same else "better" if delta > 0 else "worse"
        rows.append({"digit": digit, "production": recall["production"],
                     "candidate": recall["candidate"], "delta": delta, "images": images,
                     "change": change})
    by_size = sorted(rows, key=lambda r: -abs(r["delta"]))
    p = comparison["mcnemar_p"]
    return {**comparison, "rows": rows,
            "better": [r for r in by_size if r["change"] == "better"],
            "worse": [r for r in by_size if r["change"] == "worse"],
            "delta": comparison["candidate_accuracy"] - comparison["production_accuracy"],
            "p_text": format_p(p), "significant": p < 0.05}


def format_p(p: float) -> str:
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


def parameter_rows(params: dict, applied_min_accuracy: float,
                   applied_min_class_recall: float | None = None) -> list[tuple[str, str]]:
    """Parameters as set for the run; a threshold left unset shows the one that applied."""
    rows = []
    for name, value in params.items():
        if name == "min_class_recall" and value is None and applied_min_class_recall is not None:
            rows.append((name, f"{applied_min_class_recall:.4f} (not set for this run: "
                               "MNIST_MIN_CLASS_RECALL applied)"))
        elif name == "min_accuracy":
            shown = (f"{applied_min_accuracy:.4f}" if value is None and applied_min_accuracy is not None
                     else f"{value:.4f}" if isinstance(value, float) else str(value))
            if value is None:
                shown += " (not set for this run: MNIST_MIN_ACCURACY or the default applied)"
        else:
            shown = "not set" if value is None else str(value)
        rows.append((name, shown))
    return rows


def timing_rows(timings: dict) -> list[dict]:
    """Stage timings in run order, with the peak memory after each stage when recorded (the
    flow's timings carry it under "peak_rss_mb_after"), and their total."""
    peak = timings.get("peak_rss_mb_after") or {}
    rows = [{"stage": stage, "seconds": float(seconds), "peak_mb": peak.get(stage)}
            for stage, seconds in timings.items() if isinstance(seconds, (int, float))]
    if rows:
        rows.append({"stage": "total", "seconds": sum(r["seconds"] for r in rows), "peak_mb": None})
    return rows


def comparison_input(comparison: dict | None, production_accuracy: float | None) -> dict | None:
    """mnist_pipeline.comparison's dict (this run = a, production = b) in ReportInput's shape."""
    if comparison is None:
        return None
    return {"production_run_id": comparison["production_run_id"],
            "production_accuracy": production_accuracy if production_accuracy is not None else comparison["accuracy_b"],
            "candidate_accuracy": comparison["accuracy_a"],
            "only_candidate_right": comparison["only_a_right"], "only_production_right": comparison["only_b_right"],
            "mcnemar_p": comparison["mcnemar_p"],
            "per_class_recall": {str(c): {"production": b, "candidate": a}
                                 for c, (a, b) in enumerate(zip(comparison["recall_a"], comparison["recall_b"]))}}


def model_summary(model) -> tuple[str, int]:
    lines: list[str] = []
    # Keras's console still writes to stdout while it captures: a stdout on a full disk failed the run.
    with contextlib.redirect_stdout(io.StringIO()):
        model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines), int(model.count_params())


def decision_view(decision: GateDecision) -> dict:
    """What the report shows of a decision: the gate's checks and explanation, as JSON."""
    return dict(decision.to_json(), promoted=decision.promote)


def report_input(run_id: str, params, profile: dict, evaluation, trained,
                 decision: GateDecision, provenance: dict, plots: dict, comparison: dict | None) -> ReportInput:
    summary, count = model_summary(trained.model)
    return ReportInput(
        run_id=run_id, params=params.model_dump(), profile=profile, metrics=evaluation.metrics,
        history=trained.history,
        training={"seconds": trained.train_seconds, "weights": trained.weights, "model_summary": summary,
                  "parameters": count},
        decision=decision_view(decision),
        provenance=provenance, plots=plots,
        comparison=comparison_input(comparison, decision.production_accuracy))


@stage("compare-with-production")
def compare_task(store, production_run_id: str | None, y_test, y_pred) -> dict | None:
    """This run against the production model on the same test images (None without one)."""
    from mnist_pipeline.comparison import with_production

    return with_production(store, production_run_id, y_test, y_pred) if production_run_id else None


@stage("report")
def report_task(inp: ReportInput) -> bytes:
    return render_report(inp)
