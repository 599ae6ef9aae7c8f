"""Ensemble training on the CPU: K members as one stacked model against K sequential train() runs.

    python benchmarks/bench_ensemble.py [--members 32] [--widths 64 256] [--steps 100] [--rounds 3] [--threads 2]

Model: centered MLP, depth 3, batch 128, teacher task; the default per-step metrics (loss, per-layer
weight change, feature alignment), cadence 'none' (NTK and sharpness are computed member by member in
an ensemble, so they would gain nothing). Members: a (gamma, eta, seed) grid at moderate rates (nothing
diverges). Variants, interleaved round by round so that machine load hits them alike:

  sequential    K train() runs one after the other
  bmm           train_ensemble(impl='bmm'): batched matmuls on (K, fan_in, fan_out) weights
  vmap          train_ensemble(impl='vmap'): torch.func functional_call under vmap

Figures: steps/s per member (member-steps per second of wall time, setup included) and the ratio
sequential time / ensemble time, paired per round, median over rounds, in wall time and in process CPU
time (the work done: robust to other load on a shared machine). Threads default to 2 (OMP too).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # before torch is imported: OMP reads its thread count once
    _threads = "2"
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            _threads = sys.argv[i + 1]
        elif arg.startswith("--threads="):
            _threads = arg.split("=", 1)[1]
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402

import torch  # noqa: E402

from gammadb.metrics import MetricKey  # noqa: E402
from gammadb.runners.config import RunConfig  # noqa: E402
from gammadb.runners.ensemble import train_ensemble  # noqa: E402
from gammadb.runners.train import train  # noqa: E402

BASE = RunConfig(model="mlp", task="teacher", depth=3, batch_size=128, cadence="none", ntk=False, sharpness=False)
GAMMAS = (0.5, 1.0, 2.0, 4.0)
ETAS = (0.01, 0.03)


class NullSink:
    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        pass


def members(width: int, k: int, steps: int) -> list[RunConfig]:
    """k configs: the gamma x eta grid, then further seeds."""
    grid = [(g, e) for g in GAMMAS for e in ETAS]
    return [BASE.replace(width=width, steps=steps, gamma=grid[i % len(grid)][0], eta=grid[i % len(grid)][1], seed=i) for i in range(k)]


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def sequential(configs: list[RunConfig]) -> tuple[float, float]:
    def work() -> None:
        for c in configs:
            assert train(c, NullSink(), device="cpu").status == "completed"

    return timed(work)


def ensemble(configs: list[RunConfig], impl: str) -> tuple[float, float]:
    def work() -> None:
        outcomes = train_ensemble(configs, [NullSink() for _ in configs], device="cpu", impl=impl)  # type: ignore[arg-type]
        assert all(o.status == "completed" for o in outcomes)

    return timed(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op and OMP threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    k = args.members
    variants = ("sequential", "bmm", "vmap")
    times: dict[tuple[int, str], list[tuple[float, float]]] = {(w, v): [] for w in args.widths for v in variants}
    for width in args.widths:  # warm-up: imports, allocator, first-call dispatch
        small = members(width, 2, 5)
        sequential(small[:1]), ensemble(small, "bmm"), ensemble(small, "vmap")
    for _ in range(args.rounds):
        for width in args.widths:
            configs = members(width, k, args.steps)
            times[(width, "sequential")].append(sequential(configs))
            for impl in ("bmm", "vmap"):
                times[(width, impl)].append(ensemble(configs, impl))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"K = {k} members, MLP depth {BASE.depth}, batch {BASE.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"per-step metrics loss + weight change + feature alignment, cadence none; CPU, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores, load avg {load:.1f}")
    # Wall-time ratios are what a user sees; CPU-time ratios (process time) are the work done, which
    # other load on a shared machine barely moves. Both paired per round, median over rounds.
    print(f"{'width':>5} {'variant':<11} {'steps/s/member':>15} {'vs sequential':>14} {'(min..max)':>14} {'cpu-time ratio':>15}")
    for width in args.widths:
        seq = times[(width, "sequential")]
        for v in variants:
            values = times[(width, v)]
            ratios = [s[0] / t[0] for s, t in zip(seq, values)]
            cpu = [s[1] / t[1] for s, t in zip(seq, values)]
            rate = k * args.steps / statistics.median(t[0] for t in values)
            print(f"{width:>5} {v:<11} {rate:15.1f} {statistics.median(ratios):13.2f}x {f'({min(ratios):.2f}..{max(ratios):.2f})':>14} "
                  f"{statistics.median(cpu):14.2f}x")
        bmm, vm = times[(width, "bmm")], times[(width, "vmap")]
        print(f"{width:>5} vmap / bmm time: wall {statistics.median([v[0] / b[0] for b, v in zip(bmm, vm)]):.2f}, "
              f"cpu {statistics.median([v[1] / b[1] for b, v in zip(bmm, vm)]):.2f}")


if __name__ == "__main__":
    main()
