"""gammadb.buckets' reduction: bucket_frames (contiguous stretches, no hashing) gives bit for
bit what a polars group_by over (run_id, bucket) gives, on every grid, from one pass; bucketed_grids
reads a series once for several grids."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gammadb import buckets
from gammadb.analysis.downsample import bucketed_grids, bucketed_series
from gammadb.buckets import BUCKET_SCHEMA, bucket_frame, bucket_frames
from gammadb.metrics import MetricKey
from gammadb.transfer import import_frame


def grouped(series: pl.DataFrame, per_decade: int) -> pl.DataFrame:
    """The definition: the group_by over (run_id, bucket) that bucket_frame was until it got fast."""
    return (
        series.lazy().filter((pl.col("step") >= 1) & pl.col("value").is_finite())
        .with_columns(buckets.bucket_index(pl.col("step"), per_decade).alias("bucket"))
        .group_by("run_id", "bucket")
        .agg(pl.col("step").min().alias("step_lo"), pl.col("step").max().alias("step_hi"),
             pl.col("step").cast(pl.Float64).log().mean().exp().alias("step"), pl.len().cast(pl.Int64).alias("n"),
             pl.col("value").mean().alias("mean"), pl.col("value").min().alias("min"),
             pl.col("value").max().alias("max"),
             pl.col("value").filter(pl.col("value") > 0).log().mean().alias("mean_log"))
        .sort("run_id", "bucket").select([pl.col(c).cast(t) for c, t in BUCKET_SCHEMA.items()]).collect()
    )


def series(runs: int, steps: int, *, seed: int = 0, signed: bool = False) -> pl.DataFrame:
    """(run_id, step, value) in store order: lognormal values, steps 0..steps-1, a few NaN and inf;
    ``signed``: some values zero or negative (no log there)."""
    rng = np.random.default_rng(seed)
    value = rng.lognormal(sigma=1.0, size=runs * steps) * 10 ** rng.uniform(-3, 3, runs * steps)
    if signed:
        value *= rng.choice([1.0, -1.0, 0.0], size=value.size, p=[0.8, 0.1, 0.1])
    value[rng.random(value.size) < 0.01] = np.nan
    value[rng.random(value.size) < 0.005] = np.inf
    return pl.DataFrame({"run_id": np.repeat(np.arange(3, 3 + runs), steps),
                         "step": np.tile(np.arange(steps), runs), "value": value})


def shuffled(df: pl.DataFrame) -> pl.DataFrame:
    return df.sample(fraction=1.0, shuffle=True, seed=1)


def few_left_out() -> pl.DataFrame:
    """Store order with a few rows to leave out (under 1 in 64: left in place, not copied out): step
    0, a lone NaN or inf inside a bucket, a diverged run's NaN tail, NaN past every finite step."""
    df = series(12, 3000).with_columns(pl.col("value").fill_nan(1.5).clip(upper_bound=1e6))
    value = df["value"].to_numpy().copy()
    value[[2500, 2501, 9000]] = [np.nan, np.inf, -np.inf]  # inside the top buckets of runs 0 and 3
    value[3 * 3000 - 40:3 * 3000] = np.nan  # run 2 diverged
    tail = pl.DataFrame({"run_id": [14], "step": [5000], "value": [math.nan]})
    return pl.concat([df.with_columns(pl.Series("value", value)), tail])


CASES = {
    "store order": lambda: series(40, 3000),
    "a few rows left out": few_left_out,
    "only step 0 left out": lambda: series(8, 3000).filter(pl.col("value").is_finite()),
    "signed values": lambda: series(20, 2000, signed=True),
    "shuffled rows": lambda: shuffled(series(20, 2000, signed=True)),
    "float steps": lambda: shuffled(series(10, 2000)).with_columns(pl.col("step") * 1.37),
    "repeated steps": lambda: pl.concat([series(5, 1000, seed=1), series(5, 1000, seed=2)]),
    "sparse large steps": lambda: series(10, 1000).with_columns(pl.col("step") * 10_007),
    "int32 ids, int values": lambda: series(10, 1000).filter(pl.col("value").is_finite()).with_columns(
        pl.col("run_id").cast(pl.Int32), (pl.col("value") * 7).cast(pl.Int64)),
    "long buckets": lambda: series(2, 40_000),  # at 1 a decade: 36,000 rows in a bucket, polars' turn
    "empty": lambda: series(1, 10).head(0),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bucket_frames_are_the_group_by_bit_for_bit(case: str) -> None:
    df = CASES[case]()
    grids = (40, 7, 1, 1000)
    got = bucket_frames(df, grids)
    assert list(got) == list(grids)
    for p in grids:
        want = grouped(df, p)
        assert got[p].schema == pl.Schema(BUCKET_SCHEMA)
        assert got[p].equals(want, null_equal=True), (case, p)  # every float identical, not just close
        assert bucket_frame(df, p).equals(want, null_equal=True)
        assert bucket_frame(df.lazy(), p).equals(want, null_equal=True)
    if case == "signed values":
        assert got[40]["mean_log"].null_count() > 0  # buckets without a positive value: null, as before


def kahan_mean(values: list[float]) -> float:
    total = comp = 0.0
    for x in values:
        y = x - comp
        t = total + y
        comp = (t - total) - y
        total = t
    return total / len(values)


@pytest.mark.parametrize("case", ["store order", "a few rows left out", "sparse large steps"])
def test_merged_buckets_are_the_coarse_grid_up_to_rounding(case: str) -> None:
    """A chart's coarser grid merged from the 40 grid (what the store caches) is the coarse grid
    bucketed from the values: the same buckets, counts, extremes and step ranges exactly; the means
    and the steps' geometric means up to rounding."""
    df = CASES[case]()
    fine = bucket_frame(df, 40)
    for coarse in (20, 10, 8, 5, 4, 1):
        got, want = buckets.merge_buckets(fine, 40 // coarse), bucket_frame(df, coarse)
        assert got.columns == [c for c in BUCKET_SCHEMA if c != "mean_log"]
        exact = ["run_id", "bucket", "step_lo", "step_hi", "n", "min", "max"]
        assert got.select(exact).equals(want.select(exact)), coarse
        for c in ("mean", "step"):
            np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=1e-12, err_msg=f"{c} {coarse}")
    assert buckets.merge_buckets(fine, 1).equals(fine.drop("mean_log"))


def test_stretch_means_are_kahan_sums_in_row_order() -> None:
    """The sum a polars group_by takes; a plain or pairwise sum differs in the last bits (it did, in
    a quarter of the buckets of a 5 M-value sweep, and moved a drop step by one grid point)."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(size=5000) * 10 ** rng.uniform(-8, 8, 5000)
    n = np.array([0, 1, 2, 17, 900, 3, 0, 2048, 1000, 1])
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    (got,) = buckets._stretch_means((x,), starts, n)
    want = [kahan_mean(x[a:a + k].tolist()) if k else math.nan for a, k in zip(starts, n)]
    assert np.array_equal(got, np.array(want), equal_nan=True)
    assert any(g != float(np.sum(x[a:a + k]) / k) for g, a, k in zip(got, starts, n) if k > 100)


def test_bucketed_grids_read_once_for_every_grid(store, monkeypatch: pytest.MonkeyPatch) -> None:
    import_frame(store, series(6, 3000).filter(pl.col("value").is_finite()).join(
        pl.DataFrame({"run_id": np.arange(3, 9), "gamma": [0.1, 0.1, 1.0, 1.0, 10.0, 10.0], "eta": 0.1,
                      "seed": [0, 1] * 3}), on="run_id").drop("run_id").rename({"value": "loss"}), "g")
    ids = store.runs_frame("g")["run_id"].to_list()
    reads: list[tuple[int, ...]] = []
    real = store.values_frame
    monkeypatch.setattr(store, "values_frame",
                        lambda run_ids, *a, **k: reads.append(tuple(run_ids)) or real(run_ids, *a, **k))
    got = bucketed_grids(store, ids, MetricKey("loss"), [22, 40, 22])
    assert list(got) == [22, 40] and len(reads) == 1
    for p in (22, 40):
        assert got[p].equals(bucketed_series(store, ids, "loss", p)) and got[p].height > 50
    assert bucketed_grids(store, ids, MetricKey("nope"), [40])[40].is_empty()
