"""Benchmark: the plain Keras script vs `python flows/train_flow.py` (same model and epochs, both
from a local MNIST mirror), run alternately, with the same stages as plain functions without
Prefect (bench/pipeline_plain.py) beside them to measure the orchestration's own cost; the data
stages alone; the cnn at its defaults over seeds 42, 43, 44.

    python bench/run.py --mirror ../shared/data/mnist [--pairs 3] [--skip-cnn]

Pair i uses seed 42 + i on every side. Prints a table and writes bench/results/<UTC time>.json.
Wall time and peak RSS come from /usr/bin/time -v around each process (the flow's ephemeral
Prefect server runs in a child process: its start is in the wall time, its memory is not in the
flow's RSS). The memory of the process and its children together is sampled as well, so the
server's share is on record too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def _tree_rss_mb(root: psutil.Process) -> float:
    """Summed RSS of root's descendants (the measured process and any it started)."""
    total = 0
    for proc in root.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total / 2**20


def timed(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """(wall seconds, peak RSS MB of the process, peak summed RSS MB of it and its children,
    stdout). The process's own peak is /usr/bin/time's; the summed one is sampled every 0.1 s, so
    it can miss a short spike, and counts pages shared between processes once per process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root, tree_peak = psutil.Process(proc.pid), 0.0
    while True:  # communicate keeps reading the pipes between its time-outs
        tree_peak = max(tree_peak, _tree_rss_mb(root))
        try:
            stdout, stderr = proc.communicate(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return wall, rss_kb / 1024, tree_peak, stdout


# The CPU features TensorFlow's oneDNN uses for bfloat16 and int8 matrix products and convolutions.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> dict:
    """The CPU model and which of CPU_FLAGS it has (Linux's /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or "unknown", "flags": {}}
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.*)$", text, re.M) or re.search("()", "")).group(1).split())
    return {"model": model.group(1).strip() if model else "unknown", "flags": {f: f in flags for f in CPU_FLAGS}}


def precision_of(model_file: Path) -> str:
    """The dtype policy a stored .keras model computes in, from its config (no TensorFlow needed)."""
    with zipfile.ZipFile(model_file) as archive:
        config = archive.read("config.json").decode()
    names = set(re.findall(r'"dtype": \{"module": "keras", "class_name": "DTypePolicy", "config": \{"name": "([a-z_0-9]+)"',
                           config))
    return "/".join(sorted(names)) or "unknown"


def run_plain(mirror: str, epochs: int, seed: int, env: dict) -> dict:
    wall, rss, tree, out = timed([sys.executable, "bench/plain_script.py", mirror, str(epochs),
                                  str(seed)], env)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "tree_peak_rss_mb": round(tree),
            "train_s": result["train_seconds"],
            "test_accuracy": result["test_accuracy"]}


def run_flow(mirror: str, epochs: int | None, seed: int, env: dict, model: str = "mlp") -> dict:
    """epochs None: the model's default."""
    store = tempfile.mkdtemp(prefix="bench-store-")
    env = dict(env, MNIST_MIRRORS=mirror, MNIST_STORE_URL=store)
    launched = time.time()
    wall, rss, tree, out = timed([sys.executable, "flows/train_flow.py", "--model", model, "--seed", str(seed),
                                  *(["--epochs", str(epochs)] if epochs else [])], env)
    run_id = re.search(r"run ([0-9a-f-]{36}):", out).group(1)
    manifest = json.loads(Path(store, "runs", run_id, "manifest.json").read_text())
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "tree_peak_rss_mb": round(tree),
            "train_s": manifest["train_seconds"],
            "test_accuracy": manifest["test_accuracy"],
            "precision": precision_of(Path(store, "runs", run_id, "model.keras")),
            "timings_s": manifest["timings_s"],
            "phases_s": phases(launched, wall, datetime.fromisoformat(manifest["started_at"]).timestamp(),
                               datetime.fromisoformat(manifest["finished_at"]).timestamp())}


def phases(launched: float, wall: float, started: float, finished: float) -> dict:
    """A process's wall time split at its pipeline's start and end (epoch seconds): before (the
    interpreter, imports, for the flow its server and engine), the pipeline, after (for the flow
    the promotion, publish and retention, both: the interpreter's exit)."""
    return {"before": round(started - launched, 2), "pipeline": round(finished - started, 2),
            "after": round(launched + wall - finished, 2)}


def run_stages_plain(mirror: str, epochs: int, seed: int, env: dict) -> dict:
    store = tempfile.mkdtemp(prefix="bench-store-")
    launched = time.time()
    wall, rss, tree, out = timed([sys.executable, "bench/pipeline_plain.py", mirror, str(seed), "--epochs", str(epochs)],
                                 dict(env, MNIST_STORE_URL=store))
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "train_s": result["train_seconds"],
            "test_accuracy": result["test_accuracy"], "timings_s": result["timings_s"],
            "phases_s": phases(launched, wall, result["started_epoch"], result["finished_epoch"])}


RUN_ORDER = ("plain", "flow", "stages")


def orchestration_cost(pairs: list[dict]) -> dict:
    """Flow wall time minus the same stages without Prefect, and where the difference goes (each
    a median over the pairs, flow minus plain): before the pipeline (the flow imports Prefect,
    starts Prefect's server and its engine while TensorFlow imports; the plain run imports no
    Prefect, and TensorFlow as its own first stage, counted here), each stage's own extra time, the
    rest of the pipeline (task states, logs, artifacts between the stages), and after it."""
    def diff(get):
        return round(statistics.median(get(pr["flow"]) - get(pr["stages"]) for pr in pairs), 2)

    costs = [pr["flow"]["wall_s"] - pr["stages"]["wall_s"] for pr in pairs]
    stages = [k for k in pairs[0]["stages"]["timings_s"] if k in pairs[0]["flow"]["timings_s"]]
    per_stage = {k: diff(lambda side: side["timings_s"][k]) for k in stages}
    tf_import = lambda side: side["timings_s"].get("import tensorflow", 0.0)
    in_stages = lambda side: sum(side["timings_s"][k] for k in stages)
    return {"median_s": round(statistics.median(costs), 2), "per_pair_s": [round(c, 2) for c in costs],
            "before_pipeline_s": diff(lambda side: side["phases_s"]["before"] + tf_import(side)),
            "in_stages_s": per_stage,
            "between_stages_s": diff(lambda side: side["phases_s"]["pipeline"] - tf_import(side) - in_stages(side)),
            "after_pipeline_s": diff(lambda side: side["phases_s"]["after"])}


def data_stages(mirror: str, repeats: int = 5) -> dict:
    """fetch from the verified store cache + validate + normalize, 70,000 images, in-process."""
    sys.path.insert(0, str(REPO))
    from mnist_pipeline.store import LocalStore
    from tasks.fetch import fetch_mnist
    from tasks.normalize import normalize_and_split
    from tasks.validate import validate_mnist

    store = LocalStore(Path(tempfile.mkdtemp()))
    fetch_mnist(store, (mirror,))  # fill the cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        arrays, _ = validate_mnist(fetch_mnist(store, ("/nonexistent",)))
        normalize_and_split(arrays, 5000, 42)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mirror", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--skip-cnn", action="store_true")
    args = p.parse_args()
    mirror = str(Path(args.mirror).resolve())
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2",
               PREFECT_HOME=tempfile.mkdtemp(prefix="bench-prefect-"))
    # One warm-up run creates the Prefect database (migrations, ~7 s), as any user's first run
    # does once; the measured runs then start the ephemeral server as every later run does.
    run_flow(mirror, 1, 0, env)

    pairs = []
    for i in range(args.pairs):  # alternate, so drift in machine load hits both alike
        seed = 42 + i
        runners = {"plain": lambda: run_plain(mirror, args.epochs, seed, env),
                   "flow": lambda: run_flow(mirror, args.epochs, seed, env),
                   "stages": lambda: run_stages_plain(mirror, args.epochs, seed, env)}
        # The order rotates from pair to pair (since 2026-12-02T09): in a fixed order the flow always
        # ran right after the plain script (100 s on both cores) and the plain pipeline after it.
        order = [*RUN_ORDER[i % 3:], *RUN_ORDER[:i % 3]]
        runs = {side: runners[side]() for side in order}
        pairs.append({"seed": seed, "order": order, **runs})
        print(f"pair {i + 1} ({', '.join(order)}): plain {runs['plain']}  flow {runs['flow']}  "
              f"stages without prefect {runs['stages']}", flush=True)
    med = {side: {k: statistics.median(pr[side][k] for pr in pairs)
                  for k in ("wall_s", "peak_rss_mb", "tree_peak_rss_mb", "train_s", "test_accuracy")}
           for side in ("plain", "flow")}
    accuracy = {side: {"mean": round(statistics.mean(pr[side]["test_accuracy"] for pr in pairs), 5),
                       "stdev": round(statistics.stdev(pr[side]["test_accuracy"] for pr in pairs), 5)
                       if len(pairs) > 1 else None}
                for side in ("plain", "flow")}
    accuracy["seeds_flow_at_least_plain"] = sum(
        pr["flow"]["test_accuracy"] >= pr["plain"]["test_accuracy"] for pr in pairs)
    data = data_stages(mirror)
    cost = orchestration_cost(pairs)
    cnn = None if args.skip_cnn else [dict(run_flow(mirror, None, seed, env, model="cnn"), seed=seed)
                                      for seed in (42, 43, 44)]

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "cpu": cpu()},
        "epochs": args.epochs, "pairs": pairs, "median": med, "test_accuracy": accuracy,
        "ratios_flow_over_plain": {k: round(med["flow"][k] / med["plain"][k], 3)
                                   for k in ("wall_s", "peak_rss_mb", "tree_peak_rss_mb", "train_s")},
        "data_stages_70k": data, "orchestration_cost": cost, "cnn_at_defaults": cnn,
    }
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{result['date'][:16].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))

    r = result["ratios_flow_over_plain"]
    machine = result["machine"]["cpu"]
    print(f"\nCPU: {machine['model']}, {os.cpu_count()} cores; "
          + ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in machine["flags"].items()))
    print(f"\n| measure (median of {args.pairs}) | plain script | flow | flow/plain | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| wall time, s | {med['plain']['wall_s']:.1f} | {med['flow']['wall_s']:.1f} | {r['wall_s']:.2f} | <= 0.60 |")
    print(f"| training time, s | {med['plain']['train_s']:.1f} | {med['flow']['train_s']:.1f} | {r['train_s']:.2f} | |")
    print(f"| peak RSS, MB | {med['plain']['peak_rss_mb']:.0f} | {med['flow']['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.2f} | flow <= 1000 |")
    print(f"| peak RSS with child processes (Prefect server), MB | {med['plain']['tree_peak_rss_mb']:.0f} | "
          f"{med['flow']['tree_peak_rss_mb']:.0f} | {r['tree_peak_rss_mb']:.2f} | |")
    accs = lambda side: " / ".join(f"{pr[side]['test_accuracy']:.4f}" for pr in pairs)
    print(f"| test accuracy per seed | {accs('plain')} | {accs('flow')} | | flow >= plain |")
    mean = lambda side: f"{accuracy[side]['mean']:.4f}" + (
        f" ± {accuracy[side]['stdev']:.4f}" if accuracy[side]["stdev"] is not None else "")
    print(f"| test accuracy, mean ± sd | {mean('plain')} | {mean('flow')} | | "
          f"flow >= plain on {accuracy['seeds_flow_at_least_plain']} of {len(pairs)} seeds |")
    print(f"| data stages, 70,000 images (cached) | | {data['median_s']:.3f} s | | <= 1.0 s |")
    print(f"| orchestration cost: flow wall - the same stages without Prefect, s | | {cost['median_s']:.2f} "
          f"(pairs: {', '.join(map(str, cost['per_pair_s']))}) | | <= 3 s |")
    print(f"|   where it goes: before the pipeline (Prefect's import, server, engine; TensorFlow's import "
          f"overlapped) / in the stages / between them (task states, artifacts) / after (promotion, "
          f"publish, retention, exit), s | | "
          f"{cost['before_pipeline_s']:.2f} / {sum(cost['in_stages_s'].values()):.2f} / "
          f"{cost['between_stages_s']:.2f} / {cost['after_pipeline_s']:.2f} | | |")
    if cnn:
        limit = 2.0 * med["plain"]["wall_s"]
        for c in cnn:
            print(f"| cnn at its defaults, seed {c['seed']} ({c['precision']}): test accuracy, training time | | "
                  f"{c['test_accuracy']:.4f}, {c['train_s']:.1f} s ({c['train_s'] / med['plain']['wall_s']:.2f}x "
                  f"plain wall) | | <= {limit:.1f} s (2.0x plain wall) |")
        mean_acc = statistics.mean(c["test_accuracy"] for c in cnn)
        print(f"| cnn at its defaults: mean test accuracy over seeds 42-44 | | {mean_acc:.5f} | | >= 0.9970 |")
    print(f"\nwritten: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
