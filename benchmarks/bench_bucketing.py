"""Bucketing a series onto a log-step grid: the side-by-side numpy sums against polars' group_by,
and which one ``bucket_frames`` picks, from one run's loss (what a run's end caches) to a sweep.

    python benchmarks/bench_bucketing.py [--repeat 5]

Both paths give the same frame bit for bit (tests/analysis/test_downsample.py); this prints the best
of ``--repeat`` times of each, their ratio, and the time of ``bucket_frames`` itself, which should
be close to the faster of the two wherever they differ much.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from gammadb import buckets

SHAPES = [  # runs, steps, buckets a decade
    (1, 1_000, 40), (1, 10_000, 40), (1, 100_000, 40), (4, 10_000, 40), (16, 10_000, 40), (64, 10_000, 40),
    (500, 10_000, 40), (1, 10_000, 10), (500, 10_000, 4), (2, 40_000, 1), (50, 10_000, 1),
]


def frame(runs: int, steps: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    t = np.tile(np.arange(steps), runs)
    value = np.exp(-t / 1000.0) * rng.lognormal(sigma=0.1, size=t.size)
    return pl.DataFrame({"run_id": np.repeat(np.arange(runs), steps), "step": t, "value": value})


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'runs x steps @ per decade':>26}  {'numpy sums':>10}  {'group_by':>9}  {'numpy/group_by':>14}  {'picked':>8}")
    saved = buckets._ROWS_PER_LOOP_STEP
    for runs, steps, p in SHAPES:
        df = frame(runs, steps)
        try:
            buckets._ROWS_PER_LOOP_STEP = 0  # never group_by: the numpy sums
            numpy_ms = best_ms(lambda: buckets.bucket_frames(df, [p]), args.repeat)
        finally:
            buckets._ROWS_PER_LOOP_STEP = saved
        grouped_ms = best_ms(lambda: buckets._grouped_bucket_frame(df.lazy(), p), args.repeat)
        picked_ms = best_ms(lambda: buckets.bucket_frames(df, [p]), args.repeat)
        print(f"{runs:>9} x {steps:>7,} @ {p:>2}  {numpy_ms:8.1f} ms  {grouped_ms:6.1f} ms  {numpy_ms / grouped_ms:14.2f}  "
              f"{picked_ms:5.1f} ms")


if __name__ == "__main__":
    main()
