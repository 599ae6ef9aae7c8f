"""Sharpness of an ensemble's members: one batched Lanczos on the stacked model against K solo ones.

    python benchmarks/bench_ensemble_sharpness.py [--members 8 32] [--widths 64 256] [--rounds 3] [--threads 1]

Model: the stacked MLP (depth 3, teacher task, batch 128, the default 256-example sharpness batch and
20 Hessian-vector products), members a (gamma, eta, seed) grid, trained 50 steps first. Variants,
interleaved round by round:

  per-member   ``EnsembleModel._sharpness_of`` for each member (the CPU default): load it into a solo
               model and run ``top_hessian_eigenvalue`` on it (K separate Lanczos runs)
  batched      ``EnsembleModel._sharpness``: ``top_hessian_eigenvalues`` on the stack (one Hessian-vector
               product of the stacked model per Lanczos step serves every member)

Prints ms per evaluation of all K members (median over rounds), the ratio per-member / batched and
the largest relative difference between the two sets of values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gammadb.runners.config import RunConfig  # noqa: E402
from gammadb.runners.data import DataStream, make_task  # noqa: E402
from gammadb.runners.ensemble_model import EnsembleModel  # noqa: E402


def per_member(model: EnsembleModel, step: int) -> list[float]:
    return [model._sharpness_of(j, step) for j in range(len(model.members))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'width':>5} {'K':>4} {'per-member ms':>14} {'batched ms':>11} {'ratio':>7} {'max rel diff':>13}")
    for width in args.widths:
        for k in args.members:
            base = RunConfig(model="mlp", task="teacher", width=width, depth=3, batch_size=128, steps=50)
            grid = [(g, e, s) for s in range(4) for g in (0.5, 1.0, 2.0, 4.0) for e in (0.02, 0.05)][:k]
            configs = [base.replace(gamma=g, eta=e, seed=s) for g, e, s in grid]
            task = make_task(base)
            model = EnsembleModel(configs, task, torch.device("cpu"), torch.float32, "bmm")
            stream = DataStream(task, torch.device("cpu"), torch.float32)
            for _ in range(50):
                losses = model.losses(next(stream))
                losses.sum().backward()
                model.sgd_step(torch.isfinite(losses.detach()))
            slow, fast = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                a = per_member(model, 51)
                slow.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                b = model._sharpness(51)
                fast.append(time.perf_counter() - t0)
            diff = max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a, b))
            ratio = statistics.median(s / f for s, f in zip(slow, fast))
            print(f"{width:5d} {k:4d} {1e3 * statistics.median(slow):14.0f} {1e3 * statistics.median(fast):11.0f} "
                  f"{ratio:6.2f}x {diff:13.1e}")


if __name__ == "__main__":
    main()
