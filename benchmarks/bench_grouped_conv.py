"""Would the CNN gain from ensembles? K stacked conv stacks as one grouped convolution vs K in turn.

    python benchmarks/bench_grouped_conv.py [--members 8 32] [--widths 16 64] [--rounds 5] [--device cpu]

The paper's CNN front end on MNIST-shaped input (batch 128, 1 x 28 x 28): conv3x3(1 -> N), ReLU,
avgpool2, conv3x3(N -> 2N), ReLU, avgpool2; forward and backward. Variants, interleaved round by round:

  sequential    K separate conv stacks, one after the other (K train() runs do this)
  grouped       one stack with K groups: input repeated K times along channels, weights concatenated,
                conv2d(groups=K) (what a stacked CNN ensemble would run)

Prints seconds per forward+backward and the ratio sequential / grouped (median over rounds). A CNN
ensemble is worth building only where the ratio is well above 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor


def sequential(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    total = x.new_zeros(())
    for k in range(w1.shape[0]):
        h = F.avg_pool2d(torch.relu(F.conv2d(x, w1[k])), 2)
        h = F.avg_pool2d(torch.relu(F.conv2d(h, w2[k])), 2)
        total = total + h.sum()
    return total


def grouped(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    k = w1.shape[0]
    h = F.avg_pool2d(torch.relu(F.conv2d(x.repeat(1, k, 1, 1), w1.flatten(0, 1), groups=k)), 2)
    h = F.avg_pool2d(torch.relu(F.conv2d(h, w2.flatten(0, 1), groups=k)), 2)
    return h.sum()


def seconds(fn, x: Tensor, w1: Tensor, w2: Tensor, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn(x, w1, w2).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    print(f"{'N':>4} {'K':>4} {'sequential s':>13} {'grouped s':>10} {'sequential/grouped':>19}")
    for width in args.widths:
        for k in args.members:
            x = torch.randn(128, 1, 28, 28, generator=gen).to(device)
            w1 = torch.randn(k, width, 1, 3, 3, generator=gen).to(device).requires_grad_()
            w2 = torch.randn(k, 2 * width, width, 3, 3, generator=gen).to(device).requires_grad_()
            for fn in (sequential, grouped):  # warm-up
                seconds(fn, x, w1, w2, device)
            seq, grp = [], []
            for _ in range(args.rounds):
                seq.append(seconds(sequential, x, w1, w2, device))
                grp.append(seconds(grouped, x, w1, w2, device))
            ratio = statistics.median(s / g for s, g in zip(seq, grp))
            print(f"{width:4d} {k:4d} {statistics.median(seq):13.3f} {statistics.median(grp):10.3f} {ratio:18.2f}x")


if __name__ == "__main__":
    main()
