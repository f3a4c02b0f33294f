"""Data: ingest (new labelled digits as a dataset version), data (list the versions)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import typer

from mnist_pipeline import data_versions, registry
from mnist_pipeline.cli import interrupts
from mnist_pipeline.cli.common import app, error_line, iso, out, print_table, say, warn
from mnist_pipeline.data_versions import INGESTED_EVENT, VersionManifest
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.ingest import DEFAULT_HOLDOUT, ingest as ingest_path
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import open_store


@app.command()
def ingest(
    path: Path = typer.Argument(..., help="A folder with one subfolder per digit (0/ ... 9/) of PNG or JPEG "
                                          "images, or a CSV of path,label (paths relative to the CSV)."),
    holdout: float = typer.Option(DEFAULT_HOLDOUT, "--holdout", min=0.0, max=1.0,
                                  help="Share of each digit's images never trained on: new-data accuracy is "
                                       "measured on them."),
    note: str = typer.Option("", "--note", help="What this data is; kept in the version's manifest."),
    strict: bool = typer.Option(False, "--strict", help="Refuse the whole input if any file is bad."),
) -> None:
    """Store new labelled digit images as the next dataset version: each prepared as `predict`
    prepares images, duplicates (also of earlier versions) skipped, a bad file one line and the
    rest still stored. With a Prefect API configured, the `mnist.data.ingested` event starts the
    deployments' runs."""
    settings = load_settings()
    store = open_store(settings)  # like a training run, the first ingest may create the store
    result = ingest_path(store, path, holdout=holdout, note=note, strict=strict, actor=registry.default_actor(),
                         on_problem=lambda line: error_line(line, "skipped"))
    m = result.manifest
    skipped = len(result.problems) + len(result.duplicates)
    interrupts.finished(0, None)  # the version is stored, whole: a signal no longer changes the exit status
    say(f"data version {m.version}: {m.total:,} images from {m.source} ({m.train_images:,} to train on, "
        f"{m.holdout_images:,} held out){f'; {skipped} skipped' if skipped else ''}")
    problem = send_ingested_event(m, store.url, settings.deadline_s)
    if problem == "":
        say(f"event {INGESTED_EVENT} sent: the deployments that trigger on it start a run")
    elif problem is not None:
        warn(f"the {INGESTED_EVENT} event was not delivered ({problem}); the version is stored, "
             "the next scheduled run trains on it")


def send_ingested_event(manifest: VersionManifest, store_url: str, timeout_s: float) -> str | None:
    """"" once the Prefect API has the event; None when no API is configured (PREFECT_API_URL);
    else why it was not delivered. Sent on its own connection, closed before returning: the event
    is not left in a background queue that the process's exit would drop."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    interrupts.finished(0, f"the {INGESTED_EVENT} event may not have been sent (the next scheduled run trains on "
                           f"version {manifest.version})")
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(event=INGESTED_EVENT,
                  resource={"prefect.resource.id": f"mnist.data.version.{manifest.version}",
                            "prefect.resource.name": f"mnist data version {manifest.version}",
                            "mnist.store": store_url},
                  payload={"version": manifest.version, "images": manifest.total, "train": manifest.train_images,
                           "holdout": manifest.holdout_images, "counts": manifest.counts.model_dump(),
                           "sha256": manifest.images.sha256, "note": manifest.note, "store": store_url})

    async def send():
        async with get_events_client(reconnection_attempts=0) as client:
            await client.emit(event)

    quiet = logging.getLogger("prefect.events.clients")
    level, quiet.level = quiet.level, logging.CRITICAL  # its warning names the socket URL; ours says it once
    try:
        asyncio.run(asyncio.wait_for(send(), timeout_s))
        return ""
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}"
    finally:
        quiet.level = level


@app.command()
def data(as_json: bool = typer.Option(False, "--json", help="Every version's manifest as JSON.")) -> None:
    """The ingested dataset versions, oldest first; `*` marks those production was trained on."""
    settings = load_settings()
    store = open_store(settings, create=False)
    versions = data_versions.list_versions(store)
    if as_json:
        out.print_json(json.dumps([v.model_dump() for v in versions]))
        return
    if not versions:
        say(f"no dataset version in {store.url} yet; add one with `mnist-pipeline ingest PATH`")
        return
    used = production_versions(store)
    rows = [[str(v.version), iso(v.created_at), f"{v.train_images:,}", f"{v.holdout_images:,}",
             str(sum(v.skipped.values())), v.created_by, v.note, "*" if v.version in used else ""] for v in versions]
    print_table(f"Dataset versions in {store.url} (besides MNIST)",
                ["version", "created (UTC)", "train", "holdout", "skipped", "by", "note", "prod"], rows,
                right={"version", "train", "holdout", "skipped"})


def production_versions(store) -> set[int]:
    """The versions production's run trained on (none when nothing is in production)."""
    production, _ = registry.read_production(store)
    if production is None:
        return set()
    try:
        manifest, _ = registry.read_manifest(store, production.run_id)
    except PipelineError:
        return set()
    return {v["version"] for v in manifest.get("data_versions") or []}
