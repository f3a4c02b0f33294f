"""Review commands against a store that has seen a year (or ten) of nightly runs.

    python bench/review.py [--sizes 50,500,5000] [--repeats 5] [--mirror ../shared/data/mnist]

For each size, a fresh bucket on a moto S3 server on 127.0.0.1 is filled with that many runs as
the flow stores them (model, metrics, predictions, plots, report, manifest and the flow's history
record; real small Keras models), two of them promoted. Then `mnist-pipeline runs`, `history`,
`promote`, `rollback` and `compare` run in this process through the CLI's entry point, each
`--repeats` times; the table shows the median wall time and the S3 requests each made (counted
with a botocore event hook). Process start-up (imports) is the same at every size and is not in
these figures. Results go to bench/results/review-<UTC time>.json.
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


def measure(args: list[str], repeats: int, before=None) -> dict:
    from mnist_pipeline.cli import main

    seconds, requests = [], []
    for i in range(repeats):
        if before:
            before(i)
        REQUESTS["n"] = 0
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
            code = main(args(i) if callable(args) else args)
        seconds.append(time.perf_counter() - t0)
        requests.append(REQUESTS["n"])
        if code not in (0, 3):
            raise RuntimeError(f"{args}: exit {code}: {err.getvalue()}")
    return {"seconds": round(statistics.median(seconds), 3), "requests": max(requests)}


def bench_size(n: int, endpoint: str, zoo, mirror: Path, repeats: int) -> dict:
    os.environ.update(MNIST_STORE_URL=f"s3://review-{n}-{int(time.time())}", AWS_ENDPOINT_URL_S3=endpoint,
                      AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", MNIST_MIN_ACCURACY="0.5")
    from mnist_pipeline.settings import load_settings
    from mnist_pipeline.store import open_store

    store = open_store(load_settings())
    t0 = time.perf_counter()
    fill(store, n, zoo, mirror)
    filled = time.perf_counter() - t0
    candidates = [f"run-{n - 1 - i:05d}" for i in range(repeats)]
    results = {
        "runs": measure(["runs"], repeats),
        "history": measure(["history"], repeats),
        "promote": measure(lambda i: ["promote", candidates[i], "--allow-regression"], repeats),
        # each rollback undoes one of the promotions above, so every repeat has one to undo
        "rollback": measure(["rollback"], repeats),
        "compare": measure(["compare", candidates[0], candidates[1]], repeats),
    }
    return {"runs": n, "fill_seconds": round(filled, 1), "commands": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,500,5000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()
    from tests.fakes import model_zoo

    counting_clients()
    zoo = model_zoo(Path(args.mirror))
    moto, endpoint = start_moto()
    try:
        sizes = [bench_size(int(n), endpoint, zoo, Path(args.mirror), args.repeats) for n in args.sizes.split(",")]
    finally:
        moto.terminate()
    commands = list(sizes[0]["commands"])
    print(f"\n{'command':10}" + "".join(f"{s['runs']:>10,} runs" for s in sizes) + "   ratio (largest/smallest)")
    for command in commands:
        cells = [s["commands"][command] for s in sizes]
        ratio = cells[-1]["seconds"] / cells[0]["seconds"]
        print(f"{command:10}" + "".join(f"{c['seconds']:>8.3f} s {c['requests']:>3}r" for c in cells)
              + f"   {ratio:.2f}x time")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    out = REPO / "bench" / "results" / f"review-{stamp}.json"
    out.write_text(json.dumps({"date": stamp, "repeats": args.repeats, "machine": os.uname().nodename,
                               "cpus": os.cpu_count(), "sizes": sizes}, indent=2))
    print(f"\nwritten {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
