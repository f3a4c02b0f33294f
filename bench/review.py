"""Review commands against a store that has seen a year (or ten) of nightly runs.

    python bench/review.py [--sizes 50,500,5000] [--repeats 5] [--mirror ../shared/data/mnist]

For each size, a fresh bucket on a moto S3 server on 127.0.0.1 is filled with that many runs as
the flow stores them (model, metrics, predictions, plots, report, manifest and the flow's history
record; real small Keras models), two of them promoted. Then `mnist-pipeline runs`, `history`,
`promote`, `rollback`, `compare` and `dashboard` run as a user runs them, each `--repeats` times as a fresh
`mnist-pipeline` process (median wall time, start-up included), and once more in this process
through the CLI's entry point to count the S3 requests it makes (a botocore event hook) and to
time it without start-up; the dashboard's page size is printed too. Results go to
bench/results/review-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mnist_pipeline import registry  # noqa: E402
from mnist_pipeline.store import S3Store  # noqa: E402

REQUESTS = {"n": 0}


def count_requests(**_):
    REQUESTS["n"] += 1


def counting_clients():
    real = S3Store._make_client

    def make(self, endpoint, max_attempts):
        client = real(self, endpoint, max_attempts)
        client.meta.events.register("before-send.s3", count_requests)
        return client
    S3Store._make_client = make


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto did not start")


def fill(store, n: int, zoo, mirror: Path) -> None:
    from tests.fakes import cache_test_set, store_run

    cache_test_set(store, mirror)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store_run(store, f"run-{i:05d}", zoo[i % 3], minutes_ago=24 * 60 * (n - i)),
                      range(n)))
    for run_id in (f"run-{0:05d}", f"run-{1:05d}"):
        registry.promote(store, registry.stored_candidate(store, run_id), min_accuracy=0.5, allow_regression=True)


CLI = str(Path(sys.executable).parent / "mnist-pipeline")
PAGE = REPO / "bench" / "out" / "dashboard.html"  # gitignored


def measure(args, repeats: int) -> dict:
    """`args` (a list, or a function of the attempt number giving one): once in-process (requests,
    warm seconds), then `repeats` times as a fresh process (wall seconds)."""
    from mnist_pipeline.cli import main

    argv = args if callable(args) else (lambda i: args)
    REQUESTS["n"] = 0
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        code = main(argv(0))
    warm = time.perf_counter() - t0
    if code not in (0, 3):
        raise RuntimeError(f"{argv(0)}: exit {code}: {err.getvalue()}")
    walls = []
    for i in range(1, repeats + 1):
        t0 = time.perf_counter()
        proc = subprocess.run([CLI, *argv(i)], capture_output=True, text=True, timeout=300)
        walls.append(time.perf_counter() - t0)
        if proc.returncode not in (0, 3):
            raise RuntimeError(f"{argv(i)}: exit {proc.returncode}: {proc.stderr}")
    return {"seconds": round(statistics.median(walls), 3), "in_process_seconds": round(warm, 3),
            "requests": REQUESTS["n"]}


def bench_size(n: int, endpoint: str, zoo, mirror: Path, repeats: int) -> dict:
    os.environ.update(MNIST_STORE_URL=f"s3://review-{n}-{int(time.time())}", AWS_ENDPOINT_URL_S3=endpoint,
                      AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", MNIST_MIN_ACCURACY="0.5")
    from mnist_pipeline.settings import load_settings
    from mnist_pipeline.store import open_store

    store = open_store(load_settings())
    t0 = time.perf_counter()
    fill(store, n, zoo, mirror)
    filled = time.perf_counter() - t0
    candidates = [f"run-{n - 1 - i:05d}" for i in range(repeats + 1)]
    results = {
        "runs": measure(["runs"], repeats),
        "history": measure(["history"], repeats),
        "promote": measure(lambda i: ["promote", candidates[i], "--allow-regression"], repeats),
        # each rollback undoes one of the promotions above, so every attempt has one to undo
        "rollback": measure(["rollback"], repeats),
        "compare": measure(["compare", candidates[0], candidates[1]], repeats),
        "dashboard": measure(["dashboard", "-o", str(PAGE)], repeats),
    }
    results["dashboard"]["page_bytes"] = PAGE.stat().st_size
    return {"runs": n, "fill_seconds": round(filled, 1), "commands": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,500,5000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()
    from tests.fakes import model_zoo

    counting_clients()
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    zoo = model_zoo(Path(args.mirror))
    moto, endpoint = start_moto()
    try:
        sizes = [bench_size(int(n), endpoint, zoo, Path(args.mirror), args.repeats) for n in args.sizes.split(",")]
    finally:
        moto.terminate()
    commands = list(sizes[0]["commands"])
    print("\nwall time of a fresh process (median), S3 requests; in-process time without start-up in brackets")
    print(f"{'command':10}" + "".join(f"{s['runs']:>26,} runs" for s in sizes) + "   largest/smallest")
    for command in commands:
        cells = [s["commands"][command] for s in sizes]
        ratio = cells[-1]["seconds"] / cells[0]["seconds"]
        print(f"{command:10}" + "".join(f"{c['seconds']:>9.2f} s {c['requests']:>3} req ({c['in_process_seconds']:.3f} s)"
                                        for c in cells) + f"   {ratio:.2f}x")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    out = REPO / "bench" / "results" / f"review-{stamp}.json"
    out.write_text(json.dumps({"date": stamp, "repeats": args.repeats, "machine": os.uname().nodename,
                               "cpus": os.cpu_count(), "sizes": sizes}, indent=2))
    pages = [f"{s['commands']['dashboard']['page_bytes'] / 1024:.0f} KB at {s['runs']:,} runs" for s in sizes]
    print("dashboard page: " + ", ".join(pages))
    print(f"\nwritten {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
