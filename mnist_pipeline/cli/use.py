"""Use what was promoted: model (download it), predict (classify images with it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from mnist_pipeline import keys, registry
from mnist_pipeline.cli.common import (app, error_line, load_keras_quietly, one_line, out, save, say,
                                       settings_and_store)
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.runs import resolve_run


def verified_model_bytes(store, which: str) -> tuple[str, bytes]:
    """(run id, model bytes) of production or of a run, checked against the SHA-256 recorded
    when they were stored (production.json's, or the run's manifest's)."""
    if which == "production":
        production, _ = registry.read_production(store)
        if production is None:
            raise PipelineError(f"nothing is in production in {store.url}; name a run instead")
        return production.run_id, registry.verified_bytes(store, production.model_key, production.model_sha256,
                                                          "production model")
    run_id = resolve_run(store, which)
    manifest, _ = registry.read_manifest(store, run_id)
    key = keys.model(run_id)
    if registry.collected(store, run_id):
        raise PipelineError(f"run {run_id}'s model was deleted by `mnist-pipeline gc`")
    return run_id, registry.verified_bytes(store, key, manifest["files"][key]["sha256"], f"model of run {run_id}")


@app.command()
def model(
    which: str = typer.Argument("production", help="`production` or a run id (or a unique prefix)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="PATH", help="Where to save it (.keras)."),
) -> None:
    """Download a model (Keras 3 format), checked against its recorded SHA-256."""
    _, store = settings_and_store()
    run_id, data = verified_model_bytes(store, which)
    target = save(output, f"model-{run_id[:8]}.keras", data)
    say(f"saved {one_line(str(target))} (run {run_id}, SHA-256 {registry.sha256(data)})")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="PNG or JPEG files, one digit each."),
    run: Optional[str] = typer.Option(None, "--run", help="A run's model instead of production's."),
    as_json: bool = typer.Option(False, "--json", help="JSON: digit and all ten probabilities per image."),
) -> None:
    """Classify images of handwritten digits with the production model (or a run's), prepared as
    MNIST's own were: grayscale, inverted if dark on light, cropped to the digit, its longest
    side scaled to 20 px, centred by centre of mass in 28x28."""
    from mnist_pipeline.digits import load_digit
    from mnist_pipeline.model import model_from_bytes, predict_probabilities

    _, store = settings_and_store()
    run_id, data = verified_model_bytes(store, run or "production")
    loaded, failed = [], 0
    for path in images:
        try:
            loaded.append((path, load_digit(path)))
        except ValueError as exc:
            failed += 1
            error_line(str(exc))  # and the next image is read
    if loaded:
        load_keras_quietly()
        probabilities = predict_probabilities(model_from_bytes(data, f"model of run {run_id}"),
                                              np.stack([digit for _, digit in loaded]).astype(np.float32))
        results = [{"image": str(path), "digit": int(p.argmax()), "probability": round(float(p.max()), 6),
                    "probabilities": [round(float(x), 4) for x in p]} for (path, _), p in zip(loaded, probabilities)]
        if as_json:
            out.print_json(json.dumps({"run_id": run_id, "predictions": results}))
        else:
            for r in results:
                p = r["probability"]
                say(f"{one_line(r['image'])}: {r['digit']} ({'p>0.9999' if p > 0.9999 else f'p={p:.4f}'})")
    if failed:
        raise typer.Exit(1)
