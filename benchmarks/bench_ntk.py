"""How much faster is the layer-wise empirical NTK than per-example gradients, per call and per run?

    python benchmarks/bench_ntk.py [--rounds 5] [--train-rounds 3] [--threads N] [--no-train]

Model: MLP width 256, depth 3, float32, CPU, on the run's 64-example probe batch of mnist5k (784 inputs,
10 outputs) and of teacher (32 inputs, 1 output). Per call: ``empirical_ntk`` (layer-wise path) against
``_ntk_by_example_gradients`` (vmap of per-example gradients, the path it replaced), interleaved round by
round; the table shows the median ms per call and the median of the per-round ratios old / new. The
kernels are compared as max |K_new - K_old| / max |K_old|, in float32 and in float64.

Per run (unless --no-train): seconds of one default-config ``train()`` on mnist5k, 300 steps ('log'
cadence: NTK, test loss and sharpness at 9 steps), with the per-example path forced vs the layer-wise
one, interleaved; also the largest difference between the two runs' NTK metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from gammadb.metrics import NTK_ALIGNMENT, NTK_DISTANCE
from gammadb.runners import measure
from gammadb.runners.config import RunConfig
from gammadb.runners.data import make_task
from gammadb.runners.models import build_model
from gammadb.runners.train import ListSink, train

BASE = RunConfig(model="mlp", task="mnist5k", width=256, depth=3, batch_size=128, gamma=1.0, eta=0.05)
TASKS = ("mnist5k", "teacher")


@contextlib.contextmanager
def per_example_path() -> Iterator[None]:
    """Make ``empirical_ntk`` (as train() calls it) take the per-example path."""
    layerwise = measure._ntk_by_layers
    measure._ntk_by_layers = lambda net, x, params: None
    try:
        yield
    finally:
        measure._ntk_by_layers = layerwise


def per_call(work: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats


def kernel_difference(config: RunConfig) -> float:
    model = build_model(config)
    x = make_task(config).probe().x.to(next(model.parameters()).dtype)
    params = {k: v.detach() for k, v in model.net.named_parameters()}
    old = measure._ntk_by_example_gradients(model.net, x, params)
    new = measure._ntk_by_layers(model.net, x, params)
    assert new is not None, "the MLP must take the layer-wise path"
    return float((new - old).abs().max() / old.abs().max())


def bench_calls(rounds: int) -> None:
    print(f"{'task':<9} {'old ms':>9} {'new ms':>8} {'old/new':>8}   (min..max)   max rel diff f32, f64")
    for task in TASKS:
        config = BASE.replace(task=task)
        model = build_model(config)
        x = make_task(config).probe().x
        params = {k: v.detach() for k, v in model.net.named_parameters()}
        net = model.net

        def old(net=net, x=x, params=params) -> object:
            return measure._ntk_by_example_gradients(net, x, params)

        def new(net=net, x=x) -> object:
            return measure.empirical_ntk(net, x)

        old(), new()  # warm-up
        slow = per_call(old, 1)
        old_repeats = max(1, round(0.5 / slow))  # about half a second of each per round
        new_repeats = max(1, round(0.5 / per_call(new, 3)))
        olds, news = [], []
        for _ in range(rounds):
            olds.append(per_call(old, old_repeats))
            news.append(per_call(new, new_repeats))
        ratios = [o / n for o, n in zip(olds, news)]
        diffs = [kernel_difference(config.replace(dtype=d)) for d in ("float32", "float64")]
        print(f"{task:<9} {statistics.median(olds) * 1e3:9.2f} {statistics.median(news) * 1e3:8.2f} "
              f"{statistics.median(ratios):8.1f}   ({min(ratios):.1f}..{max(ratios):.1f})   "
              f"{diffs[0]:.1e}, {diffs[1]:.1e}")


def bench_train(rounds: int) -> None:
    config = BASE.replace(steps=300)

    def run() -> tuple[float, ListSink]:
        sink = ListSink()
        start = time.perf_counter()
        outcome = train(config, sink, device="cpu")
        assert outcome.status == "completed"
        return time.perf_counter() - start, sink

    def forced() -> tuple[float, ListSink]:
        with per_example_path():
            return run()

    times: dict[str, list[float]] = {"per-example": [], "layer-wise": []}
    sinks: dict[str, ListSink] = {}
    for _ in range(rounds):
        for name, variant in (("per-example", forced), ("layer-wise", run)):
            seconds, sinks[name] = variant()
            times[name].append(seconds)
    ratios = [o / n for o, n in zip(times["per-example"], times["layer-wise"])]
    gap = max(
        abs(a - b) / max(abs(a), 1e-12)
        for metric in (NTK_ALIGNMENT, NTK_DISTANCE)
        for a, b in zip(sinks["per-example"].values(metric), sinks["layer-wise"].values(metric))
    )
    cadence = len(sinks["layer-wise"].values(NTK_ALIGNMENT))
    print(f"train() mnist5k, {config.steps} steps ({cadence} NTK measurements), {rounds} rounds: "
          f"per-example {statistics.median(times['per-example']):.2f} s/run, "
          f"layer-wise {statistics.median(times['layer-wise']):.2f} s/run, "
          f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f}); "
          f"NTK metrics differ by at most {gap:.1e} (relative)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="skip the whole-run comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"MLP width {BASE.width}, depth {BASE.depth}, probe {BASE.probe_size}, float32, CPU, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds")
    bench_calls(args.rounds)
    if not args.no_train:
        bench_train(args.train_rounds)


if __name__ == "__main__":
    main()
