"""Throughput scaling of local workers: runs/minute of a sweep of short runs with 1, 2 and 4 worker
processes on this machine, and the fraction of each worker's time spent waiting on the store.

Usage: python benchmarks/bench_workers.py [--runs 48] [--steps 200] [--url sqlite:///...]
(default: a fresh SQLite file per worker count; pass a PostgreSQL URL to measure that instead).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gammadb.store import Store
from gammadb.runners.config import RunConfig
from gammadb.runners.plan import SweepPlan, prepare

ROOT = Path(__file__).parent.parent


def sweep_configs(n: int, steps: int) -> list[RunConfig]:
    return [RunConfig(model="mlp", task="teacher", depth=3, width=64, batch_size=32, steps=steps,
                      gamma=1.0, eta=0.001 * (i + 1), cadence="none", ntk=False, sharpness=False)
            for i in range(n)]


def measure(url: str, name: str, workers: int, n: int, steps: int) -> tuple[float, float]:
    with Store.open(url) as store:
        prepare(store, SweepPlan(name=name, spec={}, configs=sweep_configs(n, steps)))
    env = {**os.environ, "GAMMADB_URL": url, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "gammadb", "worker", "--sweep", name, "--threads", "1",
                               "--quiet"], env=env, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    waits = [float(m) for o in outs for m in re.findall(r"([\d.]+)% of it waiting", o)]
    return n / wall * 60, sum(waits) / max(1, len(waits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=48)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    base = None
    with tempfile.TemporaryDirectory() as d:
        for w in (1, 2, 4):
            url = args.url or f"sqlite:///{Path(d) / f'w{w}.sqlite'}"
            rate, wait = measure(url, f"bench-workers-{w}-{time.time():.0f}", w, args.runs, args.steps)
            base = base or rate
            print(f"{w} worker(s): {rate:6.1f} runs/min  speed-up {rate / base:4.2f}x  "
                  f"store wait {wait:4.1f}% of worker time")


if __name__ == "__main__":
    main()
