"""`mnist-pipeline`: review stored runs and manage the production model, on S3 or a folder.

Exit status: 0 done; 1 error (one line on stderr); 3 promotion/rollback refused by the gate.
"""

from __future__ import annotations

import io
import json
import webbrowser
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mnist_pipeline import registry
from mnist_pipeline.errors import NotFoundInStore, PipelineError
from mnist_pipeline.settings import load_settings
from mnist_pipeline.stats import mcnemar_exact
from mnist_pipeline.store import ArtifactStore, open_store

app = typer.Typer(help="Review stored MNIST runs and manage the production model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
out = Console()
err = Console(stderr=True)
EXIT_BLOCKED = 3


def _fail(message: str, code: int = 1):
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _store() -> ArtifactStore:
    return open_store(load_settings())


def run_ids(store: ArtifactStore) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("runs/") if key.count("/") >= 2})


def _no_runs(store: ArtifactStore) -> PipelineError:
    return PipelineError(f"no runs in {store.url} yet; run `python flows/train_flow.py` first")


def resolve_run(store: ArtifactStore, prefix: str) -> str:
    """A run id, or a unique prefix of one (like git)."""
    ids = run_ids(store)
    if not ids:
        raise _no_runs(store)
    matches = [r for r in ids if r.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PipelineError(f"run {prefix!r} not found in {store.url}; list runs with `mnist-pipeline runs`")
    raise PipelineError(f"run prefix {prefix!r} is ambiguous ({len(matches)} runs); give more characters")


def _json(store: ArtifactStore, key: str) -> dict | None:
    try:
        return json.loads(store.get(key))
    except NotFoundInStore:
        return None


def run_summary(store: ArtifactStore, run_id: str) -> dict:
    manifest = _json(store, f"runs/{run_id}/manifest.json") or {}
    accuracy = manifest.get("test_accuracy")
    if accuracy is None:  # a run that stopped before its manifest may still have its metrics
        accuracy = (_json(store, f"runs/{run_id}/metrics.json") or {}).get("test_accuracy")
    gate = manifest.get("gate", {})
    return {
        "run_id": run_id,
        "started_at": manifest.get("started_at", ""),
        "model": manifest.get("parameters", {}).get("model", "?"),
        "epochs": manifest.get("parameters", {}).get("epochs"),
        "test_accuracy": accuracy,
        "decision": ("promoted" if gate.get("promoted") else "blocked") if gate else "incomplete",
        "reason": gate.get("reason", "no manifest: the run did not finish"),
    }


@app.callback()
def _main() -> None:
    """Settings come from the environment (MNIST_STORE_URL, AWS_*): see the README."""


def _guard(fn):
    """Turn the pipeline's one-line errors into `error: ...` and exit 1, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PipelineError as exc:
            _fail(str(exc))
    return wrapper


@app.command()
@_guard
def runs(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The stored runs, newest first, and which one is in production."""
    store = _store()
    summaries = sorted((run_summary(store, r) for r in run_ids(store)),
                       key=lambda s: s["started_at"], reverse=True)
    if not summaries:
        raise _no_runs(store)
    production = (registry.read_production(store)[0] or {}).get("run_id")
    if as_json:
        out.print_json(json.dumps([dict(s, production=s["run_id"] == production) for s in summaries]))
        return
    table = Table(title=f"Runs in {store.url}")
    for column in ("run id", "started (UTC)", "model", "epochs", "test acc", "gate", "prod"):
        table.add_column(column, justify="right" if column in ("epochs", "test acc") else "left")
    for s in summaries:
        acc = f"{s['test_accuracy']:.4f}" if s["test_accuracy"] is not None else "-"
        table.add_row(s["run_id"], s["started_at"][:19].replace("T", " "), s["model"],
                      str(s["epochs"] or "-"), acc, s["decision"],
                      "[bold green]*[/]" if s["run_id"] == production else "")
    out.print(table)


@app.command()
@_guard
def report(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to save report.html."),
    open_it: bool = typer.Option(False, "--open", help="Open the saved report in a browser."),
    url: bool = typer.Option(False, "--url", help="Print a link instead (presigned on S3)."),
    expires: int = typer.Option(3600, "--expires", min=60, max=7 * 24 * 3600,
                                help="Presigned URL lifetime, seconds."),
) -> None:
    """Download a run's report.html (or print a presigned URL to it)."""
    store = _store()
    run_id = resolve_run(store, run)
    key = f"runs/{run_id}/report.html"
    if not store.exists(key):
        _fail(f"run {run_id} has no report.html (the run did not finish)")
    if url:
        out.print(store.link(key, expires), markup=False, highlight=False, soft_wrap=True)
        if store.url.startswith("s3://"):
            err.print(f"expires in {expires} s", highlight=False)
        return
    target = output or Path(f"report-{run_id}.html")
    target.write_bytes(store.get(key))
    out.print(f"saved {target}", markup=False, highlight=False)
    if open_it:
        webbrowser.open(target.resolve().as_uri())


@app.command()
@_guard
def compare(run_a: str = typer.Argument(...), run_b: str = typer.Argument(...)) -> None:
    """Parameters and metrics side by side, and McNemar's test of the accuracy difference."""
    store = _store()
    a, b = resolve_run(store, run_a), resolve_run(store, run_b)
    ma, mb = (_json(store, f"runs/{r}/manifest.json") or {} for r in (a, b))
    xa, xb = (_json(store, f"runs/{r}/metrics.json") for r in (a, b))
    if not xa or not xb:
        _fail("both runs need a metrics.json (finished runs)")
    table = Table(title="Comparison")
    table.add_column("")
    table.add_column(a[:8])
    table.add_column(b[:8])
    params = sorted(set(ma.get("parameters", {})) | set(mb.get("parameters", {})))
    for p in params:
        va, vb = ma.get("parameters", {}).get(p), mb.get("parameters", {}).get(p)
        table.add_row(p, str(va), str(vb), style="bold" if va != vb else None)
    for m in ("test_accuracy", "test_loss", "test_errors"):
        table.add_row(m, str(xa.get(m)), str(xb.get(m)))
    out.print(table)
    ya, yb = (np.load(io.BytesIO(store.get(f"runs/{r}/predictions.npy")), allow_pickle=False) for r in (a, b))
    y_true = _test_labels(store)
    only_a, only_b, p = mcnemar_exact(ya == y_true, yb == y_true)
    out.print(f"right only by {a[:8]}: {only_a}; right only by {b[:8]}: {only_b}; "
              f"McNemar exact p = {p:.4g} ({'significant' if p < 0.05 else 'not significant'} at 0.05)",
              highlight=False)


def _test_labels(store: ArtifactStore) -> np.ndarray:
    """The test labels, from the verified dataset cache in the store."""
    from tasks.fetch import CACHE_PREFIX, decompress_and_verify

    name = "t10k-labels-idx1-ubyte"
    try:
        raw = decompress_and_verify(name, store.get(CACHE_PREFIX + name + ".gz"), "the store cache")
    except NotFoundInStore:
        raise PipelineError("the MNIST cache is missing from the store; run the flow once") from None
    return np.frombuffer(raw, np.uint8, offset=8)


def _decision_exit(result: registry.PromotionResult, verb: str) -> None:
    if result.promoted:
        out.print(f"{verb}: {result.production['run_id']} is in production ({result.reason})",
                  markup=False, highlight=False)
        return
    err.print(result.reason, markup=False, highlight=False)
    raise typer.Exit(EXIT_BLOCKED)


@app.command()
@_guard
def promote(
    run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    reason: str = typer.Option("", "--reason", help="Why: recorded in the history."),
    min_accuracy: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Default: MNIST_MIN_ACCURACY."),
    max_regression: float = typer.Option(0.005, min=0.0, max=1.0),
    allow_regression: bool = typer.Option(False, "--allow-regression"),
) -> None:
    """Put a stored run's model in production, through the same gate as the flow."""
    settings = load_settings()
    store = open_store(settings)
    run_id = resolve_run(store, run)
    metrics = registry.run_metrics(store, run_id)
    result = registry.promote(
        store, run_id, float(metrics["test_accuracy"]), f"runs/{run_id}/model.keras",
        min_accuracy=settings.min_accuracy if min_accuracy is None else min_accuracy,
        max_regression=max_regression, allow_regression=allow_regression, note=reason)
    _decision_exit(result, "promoted")


@app.command()
@_guard
def rollback(reason: str = typer.Option("", "--reason", help="Why: recorded in the history.")) -> None:
    """Put the previous production model back."""
    settings = load_settings()
    result = registry.rollback(open_store(settings), min_accuracy=settings.min_accuracy, note=reason)
    _decision_exit(result, "rolled back")


@app.command()
@_guard
def history(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every promotion decision, oldest first."""
    store = _store()
    records = registry.read_history(store)
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print(f"no decisions recorded in {store.url} yet", highlight=False)
        return
    table = Table(title="Promotion history")
    for column in ("when (UTC)", "decision", "run id", "test acc", "by", "why"):
        table.add_column(column)
    for r in records:
        why = r.get("reason", "") + (f" — {r['note']}" if r.get("note") else "")
        actor = r.get("actor", "")
        actor = actor[:17] if actor.startswith("flow-run:") else actor  # flow-run:<short id>
        table.add_row(r.get("recorded_at", "")[:15], r["decision"], r["run_id"][:8],
                      f"{r.get('test_accuracy', 0):.4f}", actor, why)
    out.print(table)


if __name__ == "__main__":
    app()
