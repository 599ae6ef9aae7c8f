"""Sharpness: Lanczos (what gammadb.runners.measure.top_hessian_eigenvalue does) against the power iteration
it replaced, at equal numbers of Hessian-vector products.

    python benchmarks/bench_sharpness.py [--products 5 10 20 40] [--steps 200] [--threads 1]

Model: centered MLP width 256, depth 3, float64, trained --steps SGD steps on the task (so the
Hessian is that of a trained network), measured on the default 256-example sharpness batch. For each
task, a reference top eigenvalue from 400 power-iteration products (checked against 80 Lanczos
products: the two agree to the digits printed), then for each product count: the relative error of
each method and its milliseconds per call (median of 3). Power iteration spends every product;
Lanczos at most that many (it stops once its residual is below 1e-9 relative). The default config
allows 20 products.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gammadb.runners.config import RunConfig  # noqa: E402
from gammadb.runners.data import DataStream, make_task  # noqa: E402
from gammadb.runners.measure import top_hessian_eigenvalue  # noqa: E402
from gammadb.runners.models import build_model, build_optimizer, make_loss  # noqa: E402


def power_iteration(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *, iters: int,
                    generator: torch.Generator) -> float:
    """The previous method: ``iters`` power-iteration products, the Rayleigh quotient of the last."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    vec = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    eig = torch.zeros((), dtype=params[0].dtype)
    for _ in range(iters):
        norm = torch.sqrt(sum((v * v).sum() for v in vec))
        vec = [v / norm for v in vec]
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        eig = sum((h * v).sum() for h, v in zip(hv, vec))
        vec = [h.detach() for h in hv]
    return float(eig)


def trained(task: str, steps: int, eta: float) -> tuple[Callable[[], Tensor], list[Tensor]]:
    config = RunConfig(model="mlp", task=task, width=256, depth=3, batch_size=128, gamma=1.0, eta=eta,
                       dtype="float64", steps=steps)
    model, loss_fn, data = build_model(config), make_loss(config), make_task(config)
    stream = DataStream(data, torch.device("cpu"), torch.float64)
    optimizer = build_optimizer(config, model)
    for _ in range(steps):
        batch = next(stream)
        loss = loss_fn(model(batch.x), batch.y, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batch = data.sharpness_batch().to(torch.device("cpu"), torch.float64)
    return (lambda: loss_fn(model(batch.x), batch.y, batch.labels)), model.trainable_parameters()


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return value, 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for task, eta in (("teacher", 0.5), ("mnist5k", 2.0)):
        loss_fn, params = trained(task, args.steps, eta)

        def gen() -> torch.Generator:
            return torch.Generator().manual_seed(2)

        reference = power_iteration(loss_fn, params, iters=400, generator=gen())
        check = top_hessian_eigenvalue(loss_fn, params, iters=80, generator=gen())
        print(f"{task}: reference {reference:.10g} (400 power products; 80 Lanczos products: {check:.10g})")
        print(f"  {'products':>8} {'power rel. error':>17} {'Lanczos rel. error':>19} {'power ms':>9} "
              f"{'Lanczos ms':>11} {'Lanczos/power time':>19}")
        for k in args.products:
            old, old_ms = timed(lambda k=k: power_iteration(loss_fn, params, iters=k, generator=gen()))
            new, new_ms = timed(lambda k=k: top_hessian_eigenvalue(loss_fn, params, iters=k, generator=gen()))
            print(f"  {k:8d} {abs(old - reference) / abs(reference):17.1e} {abs(new - reference) / abs(reference):19.1e} "
                  f"{old_ms:9.0f} {new_ms:11.0f} {new_ms / old_ms:18.2f}x")


if __name__ == "__main__":
    main()
