"""Per-curve reduction of per-step series onto a log-spaced step grid.

A sweep can hold thousands of runs of 10^5 steps; neither the curve analyses nor Altair should see
10^8 rows. Every curve is cut into buckets of equal width in log10(step) (``per_decade`` buckets a
decade, shared by all curves, so curves of different lengths land on the same grid) and each bucket
keeps its count, mean, min, max (spikes stay visible), the mean of ln(value) (what the log-loss
analyses smooth) and the geometric mean of its steps. The reduction runs inside the database
(``LN``/``FLOOR`` exist in PostgreSQL and in the SQLite that the ADBC driver bundles); a SQLite
without math functions falls back to the same reduction in polars over the raw rows.

Only finite values at step >= 1 are bucketed: step 0 has no place on a log axis, NaN/inf mark a
divergence (the run's ``diverged_at`` says where).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import polars as pl

from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.metrics import MetricKey

if TYPE_CHECKING:
    from gammadb.store import Store

DEFAULT_PER_DECADE = 40  # 0.025 decades a bucket: finer than any smoothing the analyses apply
_EPS = 1e-9  # keeps FLOOR stable at exact decade boundaries (10, 100, ...) in SQL and in numpy alike
_FINITE_BOUND = 1e308  # |value| below this excludes +-inf (and PostgreSQL's NaN, which sorts above inf)
_CHUNK = 500  # run ids per IN (...) list

BUCKET_SCHEMA = {
    "run_id": pl.Int64, "bucket": pl.Int64, "step_lo": pl.Int64, "step_hi": pl.Int64,
    "step": pl.Float64, "n": pl.Int64, "mean": pl.Float64, "min": pl.Float64, "max": pl.Float64,
    "mean_log": pl.Float64,
}


def empty_buckets() -> pl.DataFrame:
    return pl.DataFrame(schema=BUCKET_SCHEMA)


def bucket_index(step: pl.Expr, per_decade: int) -> pl.Expr:
    """floor(per_decade * log10(step)), the same expression the SQL path computes."""
    k = per_decade / math.log(10)
    return (step.cast(pl.Float64).log() * k + _EPS).floor().cast(pl.Int64)


def bucket_frame(series: pl.DataFrame | pl.LazyFrame, per_decade: int = DEFAULT_PER_DECADE) -> pl.DataFrame:
    """Reduce a long frame (run_id, step, value) to one row per (run_id, bucket).

    Columns: run_id, bucket, step_lo, step_hi, step (geometric mean of the bucket's steps), n, mean,
    min, max, mean_log (mean of ln(value) over the positive values; null when none is positive).
    """
    _check_per_decade(per_decade)
    lf = series.lazy() if isinstance(series, pl.DataFrame) else series
    return (
        lf.filter((pl.col("step") >= 1) & pl.col("value").is_finite())
        .with_columns(bucket_index(pl.col("step"), per_decade).alias("bucket"))
        .group_by("run_id", "bucket")
        .agg(
            pl.col("step").min().alias("step_lo"), pl.col("step").max().alias("step_hi"),
            pl.col("step").cast(pl.Float64).log().mean().exp().alias("step"),
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("value").mean().alias("mean"), pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.col("value").filter(pl.col("value") > 0).log().mean().alias("mean_log"),
        )
        .sort("run_id", "bucket")
        .select([pl.col(c).cast(t) for c, t in BUCKET_SCHEMA.items()])
        .collect()
    )


def bucketed_series(store: "Store", run_ids: Sequence[int], metric: MetricKey | str,
                    per_decade: int = DEFAULT_PER_DECADE, max_step: Optional[int] = None) -> pl.DataFrame:
    """:func:`bucket_frame` of one metric series of ``run_ids``, computed in the database.

    The SQL binds every value (run ids, metric name and layer, the log scale); nothing is formatted
    into it but the number of ``?`` placeholders.
    """
    _check_per_decade(per_decade)
    key = metric if isinstance(metric, MetricKey) else MetricKey(metric, 0)
    ids = [int(r) for r in run_ids]
    if not ids:
        return empty_buckets()
    frames = []
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        try:
            frames.append(_bucketed_sql(store, chunk, key, per_decade, max_step))
        except GammadbError as exc:
            if "no such function" not in str(exc).lower():
                raise
            frames.append(_bucketed_python(store, chunk, key, per_decade, max_step))
    out = pl.concat(frames) if frames else empty_buckets()
    return out.sort("run_id", "bucket")


def _bucketed_sql(store: "Store", run_ids: list[int], key: MetricKey, per_decade: int,
                  max_step: Optional[int]) -> pl.DataFrame:
    # The bucket is computed in a subquery so GROUP BY names it (no repeated parameterised expression).
    lstep = "LN(CAST(v.step AS DOUBLE PRECISION))"
    inner = (
        f"SELECT v.run_id AS run_id, v.step AS step, v.value AS value, {lstep} AS lstep, "
        f"CAST(FLOOR({lstep} * ? + ?) AS BIGINT) AS bucket "
        "FROM metric_values v JOIN metrics m ON m.id = v.metric_id "
        "WHERE m.name = ? AND m.layer = ? AND v.step >= 1 AND v.value > ? AND v.value < ? "
        f"AND v.run_id IN ({', '.join('?' * len(run_ids))})"
    )
    params: list[object] = [per_decade / math.log(10), _EPS, key.name, int(key.layer),
                            -_FINITE_BOUND, _FINITE_BOUND, *run_ids]
    if max_step is not None:
        inner += " AND v.step <= ?"
        params.append(int(max_step))
    sql = (
        "SELECT run_id, bucket, MIN(step) AS step_lo, MAX(step) AS step_hi, EXP(AVG(lstep)) AS step, "
        "COUNT(*) AS n, AVG(value) AS v_mean, MIN(value) AS v_min, MAX(value) AS v_max, "
        "AVG(CASE WHEN value > 0 THEN LN(value) END) AS mean_log "
        f"FROM ({inner}) b GROUP BY run_id, bucket"
    )
    df = store.read(sql, params)
    if df.is_empty():
        return empty_buckets()
    df = df.rename({"v_mean": "mean", "v_min": "min", "v_max": "max"})
    return df.select([pl.col(c).cast(t) for c, t in BUCKET_SCHEMA.items()])


def _bucketed_python(store: "Store", run_ids: list[int], key: MetricKey, per_decade: int,
                     max_step: Optional[int]) -> pl.DataFrame:
    raw = store.series(run_ids, metrics=[key.name], max_step=max_step)
    raw = raw.filter(pl.col("layer") == key.layer).select("run_id", "step", "value")
    return bucket_frame(raw, per_decade)


def seed_bands(buckets: pl.DataFrame, runs: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Aggregate per-run buckets over the runs that share ``keys`` (e.g. everything but the seed).

    Returns one row per (keys, bucket): step (geometric mean over the runs), mean (mean of the runs'
    bucket means), lo / hi (min of their bucket minima / max of their maxima: the band shows the seed
    spread and the spikes), n_runs.
    """
    if buckets.is_empty():
        return pl.DataFrame(schema={**{k: runs.schema[k] for k in keys}, "bucket": pl.Int64,
                                    "step": pl.Float64, "mean": pl.Float64, "lo": pl.Float64,
                                    "hi": pl.Float64, "n_runs": pl.UInt32})
    joined = buckets.join(runs.select("run_id", *keys), on="run_id", how="inner")
    return (
        joined.group_by(*keys, "bucket", maintain_order=False)
        .agg(
            pl.col("step").log().mean().exp().alias("step"), pl.col("mean").mean().alias("mean"),
            pl.col("min").min().alias("lo"), pl.col("max").max().alias("hi"),
            pl.col("run_id").n_unique().alias("n_runs"),
        )
        .sort(*keys, "bucket", nulls_last=True)
    )


def rows_budget_per_decade(n_curves: int, decades: float, max_rows: int,
                           per_decade: int = DEFAULT_PER_DECADE) -> int:
    """The largest buckets-per-decade (<= ``per_decade``, >= 4) that keeps n_curves x decades x
    per_decade under ``max_rows``: a chart of thousands of curves stays a few thousand rows."""
    if n_curves <= 0 or decades <= 0:
        return per_decade
    fit = int(max_rows / (n_curves * max(decades, 1.0)))
    return max(4, min(per_decade, fit))


def _check_per_decade(per_decade: int) -> None:
    if not 1 <= int(per_decade) <= 1000:
        raise InvalidSpecError(f"buckets per decade must be between 1 and 1000 (got {per_decade})")
