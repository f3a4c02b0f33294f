"""Tuning throughput: trials per minute with 1 and with 2 Dask workers, the same trial budget.

Runs `python flows/tune_flow.py --max-parallel K` (a LocalCluster of K single-threaded worker
processes) for K = 1 and 2 with the same seed, so both searches train the same configurations
(random search proposes independently of results), and reads each run's tuning/search.json:
`seconds` is the search itself (first trial submitted to last one ended), after the workers'
warm-up (TensorFlow import and data load, done on all workers at once, reported apart).

    flock /tmp/mnist-train.lock python bench/tune_bench.py --mirror ../shared/data/mnist [--trials 8] [--epochs 2] [--pairs N]

Prints the figures; writes nothing into the repository. Target: 2 workers >= 1.7x 1 worker.
"others CPU s" is what the machine spent on other processes meanwhile (shared machines): the
figures compare only when it is near 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def run_search(workers: int, args, tmp: Path) -> dict:
    store = tmp / f"store-{workers}"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), MNIST_STORE_URL=str(store), MNIST_MIRRORS=args.mirror,
               PREFECT_HOME=str(tmp.parent / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("MNIST_DASK_ADDRESS", "PREFECT_API_URL"):
        env.pop(name, None)
    cmd = [sys.executable, "flows/tune_flow.py", "--model", args.model, "--trials", str(args.trials),
           "--epochs", str(args.epochs), "--max-parallel", str(workers), "--seed", str(args.seed),
           "--min-accuracy", "0"]
    t0, (busy0, steal0) = time.perf_counter(), machine_cpu_s()
    ours0 = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    busy1, steal1 = machine_cpu_s()
    # CPU the machine spent on anything but this run (other people's work): the figures are
    # only comparable when it is near 0. Our processes are all reaped, so RUSAGE_CHILDREN has them.
    others = (busy1 - busy0) - (sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - ours0)
    if proc.returncode not in (0, 3):
        sys.exit(f"error: the {workers}-worker run failed (exit {proc.returncode}): "
                 f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
    (search_file,) = store.glob("runs/*/tuning/search.json")
    search = json.loads(search_file.read_text())
    return {"workers": workers, "search_s": search["seconds"], "warmup_s": search["warmup_seconds"],
            "trials": search["trials_run"], "completed": search["trials_completed"],
            "trials_per_minute": search["trials_per_minute"],
            "trial_s": sorted(t["seconds"] for t in search["trials"]),
            "overhead_s": round(sum(t["wall_seconds"] - t["seconds"] for t in search["trials"]) / len(search["trials"]), 3),
            "workers_used": sorted({t["worker"] for t in search["trials"]}), "flow_wall_s": round(wall, 1),
            "other_cpu_s": round(others, 1), "steal_s": round(steal1 - steal0, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--model", default="mlp")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pairs", type=int, default=1, help="alternate 1- and 2-worker runs N times; medians")
    args = p.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        for i in range(args.pairs):
            pairs.append([run_search(k, args, Path(tmp) / f"pair-{i}") for k in (1, 2)])
    print(f"{args.trials} trials, {args.model}, {args.epochs} epochs each, full training split, "
          f"{os.cpu_count()} cores, {args.pairs} pair(s)")
    print(f"{'pair':>4} {'workers':>8} {'trials/min':>11} {'search s':>9} {'warm-up s':>10} {'flow wall s':>12} "
          f"{'overhead/trial s':>17} {'others CPU s':>13}  trial seconds")
    ratios, ratios_warm = [], []
    for i, (one, two) in enumerate(pairs):
        for r in (one, two):
            print(f"{i:>4} {r['workers']:>8} {r['trials_per_minute']:>11.2f} {r['search_s']:>9.1f} "
                  f"{r['warmup_s']:>10.1f} {r['flow_wall_s']:>12.1f} {r['overhead_s']:>17.2f} "
                  f"{r['other_cpu_s']:>13.1f}  {', '.join(f'{s:.1f}' for s in r['trial_s'])}")
        ratios.append(two["trials_per_minute"] / one["trials_per_minute"])
        ratios_warm.append((one["search_s"] + one["warmup_s"]) / (two["search_s"] + two["warmup_s"]))
    speedup, with_warmup = statistics.median(ratios), statistics.median(ratios_warm)
    print(f"speed-up, 2 workers over 1 (median of {len(ratios)}): {speedup:.2f}x "
          f"(per pair: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 1.7: "
          f"{'met' if speedup >= 1.7 else 'NOT met'}); counting the warm-up too: {with_warmup:.2f}x")
    print(json.dumps({"pairs": pairs, "speedup": round(speedup, 3), "speedup_with_warmup": round(with_warmup, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
