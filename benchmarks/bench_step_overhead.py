"""How much does train() cost per step over a bare training loop of the same model?

    python benchmarks/bench_step_overhead.py [--steps 200] [--rounds 7] [--threads N]

Model: centered MLP, width 256, depth 3, batch 128, teacher task, CPU. Variants, all measured in one
process and interleaved round by round (so machine load hits them alike). Per round, each variant's
mean time per step (first logged step to last; setup excluded) is divided by the bare loop's of the
same round; the table shows the median over rounds:

  bare          the same model, optimiser, loss and data stream in a plain loop with one loss.item()
  loss+norms    train() with LOSS and per-layer WEIGHT_CHANGE only (feature_alignment off, cadence 'none')
  +alignment    ... plus the per-step FEATURE_ALIGNMENT on the 64-example probe batch
  +cadence      the default config: also test loss, NTK and sharpness on the 'log' cadence (amortised
                over --steps; the longer the run, the smaller their share)

The sink does nothing (its cost belongs to the caller). Target: loss+norms / bare <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gammadb.metrics import MetricKey  # noqa: E402
from gammadb.runners.config import RunConfig  # noqa: E402
from gammadb.runners.data import DataStream, make_task  # noqa: E402
from gammadb.runners.models import build_model, build_optimizer, make_loss  # noqa: E402
from gammadb.runners.train import _Measurements, train  # noqa: E402

BASE = RunConfig(model="mlp", task="teacher", width=256, depth=3, batch_size=128, gamma=1.0, eta=0.05)


class TimingSink:
    """Records the time of the first and last log call; stores nothing."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.count = 0

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += 1

    def per_step(self) -> float:
        return (self.last - self.first) / (self.count - 1)


def bare(config: RunConfig) -> float:
    """Seconds per step of a plain loop (same model, optimiser, loss, data); setup excluded."""
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    loss_fn = make_loss(config)
    stream = DataStream(make_task(config))
    sink = TimingSink()
    for step in range(1, config.steps + 1):
        batch = next(stream)
        loss = loss_fn(model(batch.x), batch.y, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sink.log(step, {MetricKey("loss"): loss.item()})
    return sink.per_step()


def with_train(config: RunConfig) -> float:
    sink = TimingSink()
    train(config, sink, device="cpu")
    return sink.per_step()


def _isolated(config: RunConfig, work: Callable[[_Measurements, DataStream], object], repeats: int = 300) -> float:
    """Seconds per call of ``work`` on a fresh run's measurements (after one warm-up call)."""
    model = build_model(config)
    task = make_task(config)
    measure = _Measurements(config, task, model, make_loss(config), torch.device("cpu"), torch.float32)
    stream = DataStream(task)
    work(measure, stream)
    start = time.perf_counter()
    for _ in range(repeats):
        work(measure, stream)
    return (time.perf_counter() - start) / repeats


def norms_cost(config: RunConfig) -> float:
    """What train() adds per step for loss + weight norms, in isolation: the per-layer weight change,
    stacking it with the loss, the one host transfer and the record dict."""
    loss = torch.tensor(0.5)
    keys = [MetricKey("loss")] + [MetricKey("weight_change", layer) for layer in range(1, config.depth + 1)]

    def work(m: _Measurements, _: DataStream) -> object:
        with torch.no_grad():
            return dict(zip(keys, torch.cat([loss.reshape(1), m.weight_change()]).tolist()))

    return _isolated(config, work)


def alignment_cost(config: RunConfig) -> float:
    """The per-step feature alignment alone (probe forward, kernel, CKA)."""

    def work(m: _Measurements, _: DataStream) -> object:
        with torch.no_grad():
            return m.feature_alignment()

    return _isolated(config, work)


def cadence_cost(config: RunConfig) -> float:
    """One cadence evaluation: test loss, NTK on the probe batch, sharpness (Lanczos)."""
    return _isolated(config, lambda m, stream: m.cadence(2, stream), repeats=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = BASE.replace(steps=args.steps)
    variants: dict[str, Callable[[], float]] = {
        "bare": lambda: bare(config),
        "loss+norms": lambda: with_train(config.replace(feature_alignment=False, cadence="none")),
        "+alignment": lambda: with_train(config.replace(cadence="none")),
        "+cadence": lambda: with_train(config),
    }
    for run in variants.values():  # warm-up: imports, allocator, first-call dispatch
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(run())
    align = statistics.median(alignment_cost(config) for _ in range(3))
    norms = statistics.median(norms_cost(config) for _ in range(3))
    cadence = cadence_cost(config)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"MLP width {BASE.width}, depth {BASE.depth}, batch {BASE.batch_size}, input {BASE.resolved_input_dim}, "
          f"{args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}, load avg {load:.1f}")
    # Ratios are paired per round (each variant against the bare loop of the same round), then the
    # median is taken: load that drifts between rounds cancels.
    ratios = {name: [v / b for v, b in zip(values, times["bare"])] for name, values in times.items()}
    base = statistics.median(times["bare"])
    print(f"{'variant':<12} {'us/step':>9} {'ratio':>7}   (min..max over rounds)")
    for name, values in times.items():
        r = ratios[name]
        print(f"{name:<12} {statistics.median(values) * 1e6:9.1f} {statistics.median(r):7.3f}   ({min(r):.3f}..{max(r):.3f})")
    print(f"in isolation (load-robust): loss+norms bookkeeping {norms * 1e6:.1f} us/step = {norms / base:.3f} "
          f"of a bare step; feature alignment {align * 1e6:.1f} us/step = {align / base:.3f}; "
          f"one cadence evaluation {cadence * 1e3:.1f} ms = {cadence / base:.0f} bare steps")
    ratio = statistics.median(ratios["loss+norms"])
    print(f"target loss+norms <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'} ({ratio:.3f})")

if __name__ == "__main__":
    main()
