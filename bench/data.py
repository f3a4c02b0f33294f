"""Data that changes: ingest throughput, and what a night costs when nothing changed.

    python bench/data.py --mirror ../shared/data/mnist [--images 10000] [--nights 3] [--json]

1. Ingest: `--images` digit images that are not MNIST's (rendered and distorted, 64x64 PNGs:
   tests/digit_images.py; making them is not timed) ingested into a folder store by
   `mnist-pipeline ingest` as a user runs it (a fresh process: start-up included), then in this
   process by mnist_pipeline.ingest with its pool and without (one process), to see what the
   pool pays.
2. Nights: a `prefect server start` and `deployments/serve.py` (the README's MLP, 10 epochs,
   skip_unchanged as the deployment sets it) on a folder store; a training night (nothing in
   production), then `--nights` nights with nothing new, each a run created through the API as
   the scheduler would. Each night's wall time is read from Prefect's state history: from Pending
   (the serving process starts the run's process) to its final state, and from Running.

Prints the figures; with --json, also writes bench/results/data-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.digit_images import write_folder  # noqa: E402

CLI = str(Path(sys.executable).parent / "mnist-pipeline")
AUTH = f"bench:{uuid.uuid4().hex}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_ingest(images: int, work: Path) -> dict:
    from mnist_pipeline.ingest import ingest
    from mnist_pipeline.store import LocalStore

    started = time.perf_counter()
    folder = write_folder(work / "images", images // 10, seed=7)
    made = time.perf_counter() - started
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    results = {"images": images, "rendering_s": round(made, 1)}
    for run in range(2):  # each into a fresh store: a version of all of them every time
        store = work / f"cli-store-{run}"
        started = time.perf_counter()
        proc = subprocess.run([CLI, "ingest", str(folder)], env=dict(env, MNIST_STORE_URL=str(store)),
                              capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        results.setdefault("cli_wall_s", []).append(round(wall, 2))
    results["cli_images_per_s"] = round(images / min(results["cli_wall_s"]))
    for label, workers in (("pool", None), ("one_process", 1)):
        store = LocalStore(work / f"store-{label}")
        started = time.perf_counter()
        result = ingest(store, folder, actor="bench@here", workers=workers)
        seconds = time.perf_counter() - started
        results[f"{label}_s"] = round(seconds, 2)
        results[f"{label}_images_per_s"] = round(result.manifest.total / seconds)
    results["stored_images"] = result.manifest.total
    return results


def prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL="",
               PREFECT_SERVER_API_AUTH_STRING=AUTH)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(api + "/health", timeout=2).status == 200:
                return proc, api
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the Prefect server did not start")


def night_seconds(client, run_id) -> dict:
    states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
    stamp = {s.type.value: s.timestamp for s in states}
    end = states[-1].timestamp
    return {"state": states[-1].name, "from_pending_s": round((end - stamp["PENDING"]).total_seconds(), 2),
            "running_s": round((end - stamp["RUNNING"]).total_seconds(), 2)}


def bench_nights(mirror: str, nights: int, work: Path) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    (work / "server").mkdir()
    server, api = prefect_server(work / "server")
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=AUTH, PREFECT_RUNNER_POLL_FREQUENCY="1",
               PREFECT_HOME=str(work / "serve-home"), MNIST_STORE_URL=str(work / "night-store"), MNIST_MIRRORS=mirror)
    env.pop("MNIST_MIN_ACCURACY", None)
    serve = subprocess.Popen([sys.executable, "deployments/serve.py", "--name", "bench", "--cron", "0 0 1 1 *"],
                             cwd=REPO, env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}), \
                get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    deployment = client.read_deployment_by_name("mnist-training/bench")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)

            def night() -> dict:
                run = client.create_flow_run_from_deployment(deployment.id)
                while not ((state := client.read_flow_run(run.id).state) and state.is_final()):
                    time.sleep(0.5)
                return night_seconds(client, run.id)
            trained = night()
            unchanged = [night() for _ in range(nights)]
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(60)
        server.terminate()
        server.wait(60)
    median = statistics.median(n["from_pending_s"] for n in unchanged)
    return {"training_night": trained, "unchanged_nights": unchanged, "unchanged_median_from_pending_s": median,
            "ratio_from_pending": round(median / trained["from_pending_s"], 3),
            "ratio_running": round(statistics.median(n["running_s"] for n in unchanged) / trained["running_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also write bench/results/data-<UTC time>.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        ingest = bench_ingest(args.images, work)
        print(f"ingest {ingest['images']:,} images: `mnist-pipeline ingest` {min(ingest['cli_wall_s']):.2f} s "
              f"({ingest['cli_images_per_s']:,} images/s, runs {ingest['cli_wall_s']}); in-process with the pool "
              f"{ingest['pool_s']:.2f} s ({ingest['pool_images_per_s']:,}/s), in one process "
              f"{ingest['one_process_s']:.2f} s "
              f"({ingest['one_process_images_per_s']:,}/s); target >= 1,000 images/s")
        nights = bench_nights(args.mirror, args.nights, work)
        t, u = nights["training_night"], nights["unchanged_nights"]
        print(f"training night (MLP, 10 epochs): {t['from_pending_s']:.2f} s from Pending, "
              f"{t['running_s']:.2f} s running "
              f"({t['state']})")
        print(f"unchanged nights: {[n['from_pending_s'] for n in u]} s from Pending, {[n['running_s'] for n in u]} s "
              f"running ({', '.join(n['state'] for n in u)}); median/training: {nights['ratio_from_pending']} from "
              f"Pending, {nights['ratio_running']} running; targets <= 5 s and <= 0.1")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
        out = REPO / "bench" / "results" / f"data-{stamp}.json"
        out.write_text(json.dumps({"date": stamp, "machine": platform.node(), "cpus": os.cpu_count(),
                                   "python": platform.python_version(), "ingest": ingest, "nights": nights}, indent=2))
        print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
