"""Review: runs, history, report, compare, dashboard."""

from __future__ import annotations

import json
import webbrowser
from typing import Optional

import typer

from mnist_pipeline import keys, registry
from mnist_pipeline.cli.common import (app, iso, one_line, out, output_path, print_table, save, say, settings_and_store,
                                       warn)
from mnist_pipeline.comparison import compare_predictions, stored_predictions
from mnist_pipeline.dataset import load_test_labels
from mnist_pipeline.errors import NotFoundInStore, PipelineError
from mnist_pipeline.runs import newest_runs, no_runs_error, resolve_run, run_folders, why_missing

LIMIT = typer.Option(20, "--limit", "-n", min=1, help="How many, newest first.")
ALL = typer.Option(False, "--all", help="Everything, not just the newest page.")
JSON = typer.Option(False, "--json", help="JSON instead of a table (full ids, ISO times).")


def _acc(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@app.command()
def runs(limit: int = LIMIT, show_all: bool = ALL, as_json: bool = JSON) -> None:
    """The stored runs, newest first, and which one is in production."""
    _, store = settings_and_store()
    summaries, complete = newest_runs(store, None if show_all else limit)
    if as_json:  # an empty store is `[]`, as in `history --json`: a script tells it from a failure
        out.print_json(json.dumps([s.to_json() for s in summaries]))
        return
    if not summaries and (show_all or not run_folders(store)):
        raise no_runs_error(store)
    rows = [[s.run_id, iso(s.started_at or s.time), s.model or "-", str(s.epochs or "-"), _acc(s.test_accuracy),
             s.decision, "*" if s.production else "", _new_data(s.new_data_accuracy, s.production_new_data_accuracy)]
            for s in summaries]
    print_table(f"Runs in {store.url}", ["run id", "started (UTC)", "model", "epochs", "test acc", "gate", "prod",
                                         "new data (prod before)"], rows, right={"epochs", "test acc"})
    if not complete:
        warn(f"showing the newest {len(summaries)} runs that reached a decision; --limit N for more, "
             "--all for every run (also those that did not finish)")
    elif not show_all and len(run_folders(store)) > len(summaries):  # a short history: a cheap listing
        warn("some runs did not reach a decision (interrupted, or restored without their history): --all shows them")


def _new_data(accuracy, before) -> str:
    """This run's new-data accuracy and, in brackets, production's model's on the same images."""
    if accuracy is None:
        return "-"
    return _acc(accuracy) + (f" ({_acc(before)})" if before is not None else "")


@app.command()
def history(limit: int = LIMIT, show_all: bool = ALL, as_json: bool = JSON) -> None:
    """Promotion decisions (promoted, blocked, rollback), newest first, with who and why."""
    _, store = settings_and_store()
    page, complete = (registry.history_keys(store), True) if show_all else registry.newest_history_keys(store, limit)
    records = [dict(registry.read_history_record(store, k).model_dump(), key=k) for k in reversed(page)]
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        say(f"no decisions recorded in {store.url} yet")
        return
    rows = []
    for r in records:
        why = r.get("reason", "") + (f" ({r['note']})" if r.get("note") else "")
        rows.append([iso(registry.history_key_time(r["key"])), r["decision"], r["run_id"], _acc(r.get("test_accuracy")),
                     r.get("actor", ""), why])
    print_table("Promotion history", ["when (UTC)", "decision", "run id", "test acc", "by", "why"], rows,
                right={"test acc"})
    if not complete:
        warn(f"showing the newest {len(records)} decisions; --limit N or --all for more")


@app.command()
def report(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="PATH",
                                         help="File or folder to save report.html to."),
    open_it: bool = typer.Option(False, "--open", help="Open the saved report in a browser."),
    url: bool = typer.Option(False, "--url", help="Print a link instead (presigned on S3)."),
    expires: int = typer.Option(3600, "--expires", min=60, max=7 * 24 * 3600, help="Link lifetime, seconds."),
) -> None:
    """Save a run's report.html (and open it), or print a link to it."""
    _, store = settings_and_store()
    run_id = resolve_run(store, run)
    key = keys.report(run_id)
    if not store.exists(key):
        raise PipelineError(f"run {run_id} has no report.html: {why_missing(store, run_id, key)}")
    if url:
        link = store.link(key, expires)
        say(link or store.location(key))
        if link is None:
            warn("a folder store has no web link: that is the file's path")
        elif store.url.startswith("s3://"):
            warn(f"the link expires in {expires} s")
        return
    target = save(output, f"report-{run_id}.html", store.get(key))
    say(f"saved {one_line(str(target))}")
    if open_it and not webbrowser.open(target.resolve().as_uri()):
        warn(f"no browser could be opened here; the report is at {target.resolve()}")


def _param_rows(ma: dict, mb: dict) -> list[list[str]]:
    pa, pb = ma.get("parameters") or {}, mb.get("parameters") or {}
    rows = []
    for name in sorted(set(pa) | set(pb)):
        a, b = pa.get(name), pb.get(name)
        if name == "min_accuracy":  # None means "the default": show the threshold that applied
            name, a, b = "threshold applied", _acc(ma.get("min_accuracy")), _acc(mb.get("min_accuracy"))
        rows.append([name, str(a), str(b), "" if a == b else "differs"])
    return rows


@app.command()
def compare(run_a: str = typer.Argument(...), run_b: str = typer.Argument(...)) -> None:
    """Two runs side by side (differences marked, B minus A), and McNemar's exact test of their
    accuracy difference on the same 10,000 test images."""
    _, store = settings_and_store()
    a, b = resolve_run(store, run_a), resolve_run(store, run_b)
    ma, mb = (_manifest(store, r) for r in (a, b))
    c = compare_predictions(load_test_labels(store), stored_predictions(store, a), stored_predictions(store, b))
    delta = c["accuracy_b"] - c["accuracy_a"]
    rows = _param_rows(ma, mb) + [
        ["test accuracy", _acc(c["accuracy_a"]), _acc(c["accuracy_b"]), f"{delta:+.4f}" if delta else ""],
        ["test errors", str(round((1 - c["accuracy_a"]) * 10000)), str(round((1 - c["accuracy_b"]) * 10000)),
         f"{round(-delta * 10000):+d}" if delta else ""]] + _data_rows(store, a, b, ma, mb)
    for digit, (ra, rb) in enumerate(zip(c["recall_a"], c["recall_b"])):
        rows.append([f"recall of {digit}", _acc(ra), _acc(rb), f"{rb - ra:+.4f}" if rb != ra else ""])
    print_table("Comparison", ["", a, b, "B - A"], rows, right={a, b, "B - A"})
    significance = "significant" if c["mcnemar_p"] < 0.05 else "not significant"
    say(f"right only by {a[:8]}: {c['only_a_right']}; right only by {b[:8]}: {c['only_b_right']}; "
        f"McNemar exact p = {c['mcnemar_p']:.4g} ({significance} at 0.05)")


def _data_rows(store, a: str, b: str, ma: dict, mb: dict) -> list[list[str]]:
    """The dataset versions each run learned from, and from their metrics.json each one's
    new-data accuracy and production's model's before it (on the same images only when both
    runs had the same versions)."""
    na, nb = ((_json(store, keys.metrics(r)).get("new_data") or {}) for r in (a, b))
    va, vb = _versions(ma), _versions(mb)
    if not (na or nb or ma.get("data_versions") or mb.get("data_versions")):
        return []
    rows = [["data versions", va, vb, "" if va == vb else "differs"]]
    if na or nb:
        acc_a, acc_b = na.get("accuracy"), nb.get("accuracy")
        same = na.get("versions") == nb.get("versions")
        delta = "" if acc_a is None or acc_b is None else f"{acc_b - acc_a:+.4f}" if same else "other images"
        rows += [["new-data accuracy", _acc(acc_a), _acc(acc_b), delta],
                 ["  production's model before", _acc(_before(na)), _acc(_before(nb)), ""],
                 ["new-data holdout images", str(na.get("images", "-")), str(nb.get("images", "-")), ""]]
    return rows


def _before(new_data: dict) -> float | None:
    return (new_data.get("production_before") or {}).get("accuracy")


def _versions(manifest: dict) -> str:
    found = [v["version"] for v in manifest.get("data_versions") or []]
    return ", ".join(map(str, found)) if found else "none (MNIST alone)"


def _manifest(store, run_id: str) -> dict:
    return _json(store, keys.manifest(run_id))


def _json(store, key: str) -> dict:
    try:
        value = json.loads(store.get(key))
    except NotFoundInStore:
        return {}
    except ValueError:
        raise PipelineError(f"{key} is not JSON; `mnist-pipeline verify` checks it") from None
    return value if isinstance(value, dict) else {}


@app.command()
def dashboard(
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="PATH",
                                         help="File or folder to write it to (default: dashboard.html in the "
                                              "current folder)."),
    open_it: bool = typer.Option(False, "--open", help="Open it in a browser."),
) -> None:
    """Every run on one page: accuracy over time against the gate and production, every decision
    and why, the latest runs with links to their reports, production's lineage. Links are relative
    to where it is written on a folder store, presigned (7 days) on S3."""
    from mnist_pipeline import dashboard as page

    settings, store = settings_and_store()
    target = output_path(output, "dashboard.html")
    links = page.Links(store, target)
    data = page.render(store, page.read_index(store), links, settings.min_accuracy)
    save(target, "dashboard.html", data)
    say(f"saved {one_line(str(target))}" + (f" (its report links expire {iso(links.expires)})" if links.expires else ""))
    if open_it and not webbrowser.open(target.resolve().as_uri()):
        warn(f"no browser could be opened here; the dashboard is at {target.resolve()}")
