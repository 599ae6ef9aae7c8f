"""The bucketing of per-step series onto a log-spaced step grid, and the packing of a run's buckets
into the store's cache (``series_buckets``).

Every curve is cut into buckets of equal width in log10(step) (``per_decade`` buckets a decade, shared
by all curves, so curves of different lengths land on the same grid) and each bucket keeps its count,
mean, min, max (spikes stay visible), the mean of ln(value) (what the log-loss analyses smooth) and
the geometric mean of its steps. Only finite values at step >= 1 are bucketed: step 0 has no place on
a log axis, NaN/inf mark a divergence (the run's ``diverged_at`` says where).

This module is maths on frames and imports nothing of gammadb's above it: the analyses bucket what
they read (:mod:`gammadb.analysis.downsample`), and the store buckets each run's loss where it writes
the run's summary (:meth:`gammadb.store.Store.cache_loss_buckets`), so the first chart after a sweep
finds them cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import polars as pl

from gammadb.errors import InvalidSpecError

DEFAULT_PER_DECADE = 40  # 0.025 decades a bucket: finer than any smoothing the analyses apply
_EPS = 1e-9  # keeps FLOOR stable at exact decade boundaries (10, 100, ...)

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
    return bucket_frames(series, (per_decade,))[per_decade]


def bucket_frames(series: pl.DataFrame | pl.LazyFrame, per_decades: Sequence[int]) -> dict[int, pl.DataFrame]:
    """:func:`bucket_frame` of ``series`` on several grids ({per_decade: frame}) from one pass.

    No hashing: the bucket index grows with the step, so in a frame in (run_id, step) order (the
    store's reads are; anything else is sorted stably by run_id and bucket first) every (run_id,
    bucket) is a contiguous stretch of rows. Counts, extremes and step ranges are numpy ``reduceat``
    over the stretches; the means are the Kahan-compensated sums in row order that a polars
    group_by takes (:func:`_stretch_means`); the bucket index and the logarithms are the same polars
    expressions, ln(step) and the index taken once per distinct step, and the mean of ln(step) once
    per distinct stretch of steps (:func:`_log_step_means`). The result is bit for bit the
    group_by over (run_id, bucket) this replaced (tests/analysis/test_downsample.py holds it to
    that), which still serves the frames whose stretches are few and long for the rows they hold
    (one run's series, or one bucket a decade).
    """
    grids = list(dict.fromkeys(int(p) for p in per_decades))
    for p in grids:
        _check_per_decade(p)
    lf = series.lazy() if isinstance(series, pl.DataFrame) else series
    df = lf.select(pl.col("run_id").cast(pl.Int64), "step", pl.col("value").cast(pl.Float64)).collect()
    run, step, value = (df[c].to_numpy() for c in ("run_id", "step", "value"))
    with np.errstate(invalid="ignore"):
        keep = (step >= 1) & np.isfinite(value)
    # The rows left out (step 0, a NaN or inf value) stay where they are, in stretches of their own
    # that the result leaves out (a few in millions: copying every array without them costs more
    # than the reduction); many of them, or steps that are not integers, are copied out as before.
    dropped: Optional[np.ndarray] = None
    if not keep.all():
        dropped = np.flatnonzero(~keep)
        if step.dtype.kind not in "iu" or dropped.size > step.size // 64:
            run, step, value = run[keep], step[keep], value[keep]
            dropped = None
    kept = step.size - (0 if dropped is None else dropped.size)
    if kept == 0:
        return {p: empty_buckets() for p in grids}
    if dropped is None:
        lo, hi = int(step.min()), int(step.max())
    else:
        lo = int(np.min(step, where=keep, initial=np.iinfo(step.dtype).max))
        hi = int(np.max(step, where=keep, initial=np.iinfo(step.dtype).min))
    by_table = step.dtype.kind in "iu" and hi - lo < max(4 * kept, 1 << 16)
    if dropped is not None and not by_table:  # the per-row expressions need them gone
        run, step, value = run[keep], step[keep], value[keep]
        dropped = None
    step_s = pl.Series("step", step)
    log_step: Optional[np.ndarray] = None  # ln(step) per row; None: looked up per stretch in log_table
    if by_table:
        # integer steps: the expressions over the range of steps, looked up per row
        first = 0 if lo < max(kept, 1 << 16) else lo  # from step 0 spares an array of offsets
        at = step if first == 0 else step - first
        if dropped is not None and bool(np.any((step[dropped] < first) | (step[dropped] > hi))):
            at = at.copy() if at is step else at
            at[dropped] = 0  # a row left out looks up any entry: its stretch is not kept
        grid_steps = pl.Series("step", np.arange(first, hi + 1, dtype=step.dtype)).clip(lower_bound=1)
        log_table = grid_steps.cast(pl.Float64).log().to_numpy()
        # the index fits 32 bits (<= 1000 x 19 decades): half the memory of the rows' lookups
        bucket_of = {p: pl.select(bucket_index(grid_steps, p)).to_series().to_numpy().astype(np.int32)[at]
                     for p in grids}
    else:
        log_step = step_s.cast(pl.Float64).log().to_numpy()
        bucket_of = {p: pl.select(bucket_index(step_s, p)).to_series().to_numpy() for p in grids}
    if dropped is not None:
        # kept rows of bucket b get the code 2b, rows left out 2b + 1 (-1 below step 1, before every
        # bucket): the codes of a run still never decrease where they did not, and no stretch mixes both
        dropped_below = step[dropped] < 1
        for code in bucket_of.values():
            code *= 2
            code[dropped] = np.where(dropped_below, -1, code[dropped] + 1)
    positive = value > 0 if dropped is None else (value > 0) & keep
    log_value = pl.Series(value).log().to_numpy()  # NaN or -inf where not positive: never summed
    step_int = step_s.cast(pl.Int64).to_numpy()
    out = {}
    for p in grids:
        cols = [run, bucket_of[p], step_int, value, log_value, positive, log_step if log_step is not None else at]
        if not _in_order(cols[0], cols[1]):
            order = np.lexsort((cols[1], cols[0]))  # stable: a bucket's rows keep their order
            cols = [c[order] for c in cols]
        r, code, st, v, lv, pos, ls_or_at = cols
        starts = np.flatnonzero(np.concatenate(([True], (r[1:] != r[:-1]) | (code[1:] != code[:-1]))))
        n = np.diff(np.append(starts, r.size))
        sel = slice(None) if dropped is None else np.flatnonzero((code[starts] & 1) == 0)  # kept stretches
        ks, kn = starts[sel], n[sel]
        if kept < _ROWS_PER_LOOP_STEP * (int(kn.max()) + _LOOP_FIXED):  # polars' group_by is faster here
            out[p] = _grouped_bucket_frame(lf, p)
            continue
        lo_of, hi_of = np.minimum.reduceat(st, starts)[sel], np.maximum.reduceat(st, starts)[sel]
        if log_step is not None:
            (mean_ls,) = _stretch_means((ls_or_at,), ks, kn)
        else:
            mean_ls = _log_step_means(log_table, ls_or_at, st, ks, kn, lo_of)
        n_pos_all = np.add.reduceat(pos, starts, dtype=np.int64)  # 0 in the stretches left out
        n_pos = n_pos_all[sel]
        if n_pos.sum() == kept:  # every value positive (a loss): one pass for both means
            mean, mean_log = _stretch_means((v, lv), ks, kn)
        else:  # the mean of the logs is over the positive values only
            (mean,) = _stretch_means((v,), ks, kn)
            (mean_log,) = _stretch_means((lv[pos],), (np.cumsum(n_pos_all) - n_pos_all)[sel], n_pos)
        out[p] = pl.DataFrame({
            "run_id": r[ks], "bucket": (code[ks] if dropped is None else code[ks] >> 1).astype(np.int64),
            "step_lo": lo_of, "step_hi": hi_of,
            "step": pl.Series(mean_ls).exp(), "n": kn, "mean": mean,
            "min": np.minimum.reduceat(v, starts)[sel], "max": np.maximum.reduceat(v, starts)[sel],
            "mean_log": pl.Series(mean_log).set(pl.Series(n_pos == 0), None),
        }, schema=BUCKET_SCHEMA)
    return out


def _in_order(run: np.ndarray, key: np.ndarray) -> bool:
    """Whether (run, key) never decreases from one row to the next (ties allowed)."""
    if run.size < 2 or bool(np.any(run[1:] < run[:-1])):
        return run.size < 2
    return not bool(np.any((key[1:] < key[:-1]) & (run[1:] == run[:-1])))


def _log_step_means(log_table: np.ndarray, at: np.ndarray, step: np.ndarray, starts: np.ndarray,
                    n: np.ndarray, step_lo: np.ndarray) -> np.ndarray:
    """The mean of ln(step) of each stretch (:func:`_stretch_means` of ``log_table[at]``), taken once
    per distinct stretch: every stretch of consecutive steps that starts at the same step and is as
    long holds the same values (across runs that log alike, nearly all of them), so the first stands
    for all; any other stretch stands for itself."""
    internal = np.flatnonzero(np.diff(step) != 1) + 1  # rows that do not follow the row before by one step
    gapped = np.zeros(starts.size, dtype=bool)
    where = np.searchsorted(starts, internal, side="right") - 1  # the stretch starting at or before
    at_or_in = np.maximum(where, 0)
    inside = (where >= 0) & (internal > starts[at_or_in]) & (internal < starts[at_or_in] + n[at_or_in])
    gapped[where[inside]] = True
    # one key per (first step, length); a gapped stretch gets a key of its own (a negative one)
    offset, width = step_lo - step_lo.min(), int(n.max()) + 1
    if int(offset.max()) < (1 << 62) // width:
        key = np.where(gapped, -1 - np.arange(starts.size), offset * width + n)
    else:
        key = np.stack([np.where(gapped, -1 - np.arange(starts.size), offset), n])
    _, first, inverse = np.unique(key, axis=key.ndim - 1, return_index=True, return_inverse=True)
    rep_n = n[first]
    rep_starts = np.cumsum(rep_n) - rep_n
    rows = np.repeat(starts[first] - rep_starts, rep_n) + np.arange(int(rep_n.sum()))
    (mean,) = _stretch_means((log_table[at[rows]],), rep_starts, rep_n)
    return mean[inverse.reshape(-1)]


# The side-by-side sums take a numpy step (about 25 us, for each array summed) per row of the longest
# stretch, plus about 35 ns a row and 4 ms whatever the size; polars' group_by about 80 ns a row
# and 2 ms. So polars wins where the stretches are few and long for the rows they hold: a run or a
# few (the loss bucketed at a run's end: 1 run x 10,000 steps, 3 ms against 15 ms), or 1 bucket a
# decade; many runs stay here (500 x 10,000 at 40 a decade: 0.2 s against 0.4 s). Measured by
# ``benchmarks/bench_bucketing.py``, which prints both paths' times and the one chosen.
_ROWS_PER_LOOP_STEP = 500
_LOOP_FIXED = 100


def _stretch_means(xs: Sequence[np.ndarray], starts: np.ndarray, n: np.ndarray) -> list[np.ndarray]:
    """For each array ``x`` of ``xs``, the mean of each stretch ``x[starts[i] : starts[i] + n[i]]``
    (NaN where n is 0), as a polars group_by takes a mean: a Kahan-compensated sum in row order,
    divided by the count. The stretches are summed side by side, one row of each per numpy step,
    the longest first (so the ones still running are always a prefix): as many steps as the
    longest stretch has rows."""
    out = [np.full(n.size, np.nan) for _ in xs]
    idx = np.flatnonzero(n > 0)
    if idx.size:
        idx = idx[np.argsort(-n[idx], kind="stable")]
        length, first = n[idx], starts[idx]
        running = np.searchsorted(-length, -np.arange(length[0]), side="left").tolist()  # longer than k
        total, comp, y, t, got = (np.empty(idx.size) for _ in range(5))
        at = np.empty(idx.size, dtype=np.int64)
        for x, mean in zip(xs, out):  # one array at a time: 1-d steps beat a stacked 2-d pass
            total[:] = comp[:] = 0.0
            for k, c in enumerate(running):
                np.add(first[:c], k, out=at[:c])  # row k of the c stretches longer than k
                np.take(x, at[:c], out=got[:c])
                np.subtract(got[:c], comp[:c], out=y[:c])
                np.add(total[:c], y[:c], out=t[:c])
                np.subtract(t[:c], total[:c], out=comp[:c])
                np.subtract(comp[:c], y[:c], out=comp[:c])
                total[:c] = t[:c]
            mean[idx] = total / length
    return out


def _grouped_bucket_frame(lf: pl.LazyFrame, per_decade: int) -> pl.DataFrame:
    """:func:`bucket_frame` as a polars group_by over (run_id, bucket): where the buckets are so
    long and so few that a numpy step per row of a bucket costs more than hashing every row."""
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



def merge_buckets(buckets: pl.DataFrame, factor: int) -> pl.DataFrame:
    """The buckets of a grid ``factor`` times coarser, merged from ``buckets`` (a :func:`bucket_frame`
    of ``per_decade``; ``factor`` divides it): bucket ``b // factor`` of each run holds the finer
    buckets b. Counts, extremes and step ranges are exact; the mean and the geometric mean of the
    steps are the count-weighted means of the finer ones (equal to bucketing on the coarse grid up
    to rounding in the last bits). mean_log is left out: a finer bucket does not keep how many of its
    values were positive. A chart that draws fewer buckets than 40 a decade takes them from the 40
    grid this way, so the one grid the store caches at each run's end serves it."""
    if factor == 1:
        return buckets.drop("mean_log")
    n = pl.col("n").cast(pl.Float64)
    return (
        buckets.group_by("run_id", (pl.col("bucket") // factor).alias("bucket"))
        .agg(
            pl.col("step_lo").min(), pl.col("step_hi").max(),
            ((pl.col("step").log() * n).sum() / n.sum()).exp().alias("step"),
            pl.col("n").sum(), ((pl.col("mean") * n).sum() / n.sum()).alias("mean"),
            pl.col("min").min(), pl.col("max").max(),
        )
        .sort("run_id", "bucket")
        .select([pl.col(c).cast(t) for c, t in BUCKET_SCHEMA.items() if c != "mean_log"])
    )


# A run's buckets as cached in the store: the int64 columns, then the float64 columns, each whole,
# little-endian; mean_log's nulls (no positive value in the bucket) as NaN, which it never is otherwise.
BUCKET_LAYOUT = 1  # bump when the packing, BUCKET_SCHEMA or the bucketing maths change: old rows are then ignored
_INT_COLUMNS = ("bucket", "step_lo", "step_hi", "n")
_FLOAT_COLUMNS = ("step", "mean", "min", "max", "mean_log")
_PACKED_BYTES = 8 * (len(_INT_COLUMNS) + len(_FLOAT_COLUMNS))  # a bucket


def pack_buckets(frame: pl.DataFrame) -> dict[int, bytes]:
    """{run_id: blob} of a bucket frame in (run_id, bucket) order (:data:`BUCKET_LAYOUT`)."""
    if frame.is_empty():
        return {}
    run = frame["run_id"].to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], run[1:] != run[:-1])))
    ends = np.append(starts[1:], run.size)
    ints = np.stack([frame[c].to_numpy() for c in _INT_COLUMNS]).astype("<i8", copy=False)
    floats = np.stack([frame[c].to_numpy() if c != "mean_log" else frame[c].fill_null(np.nan).to_numpy()
                       for c in _FLOAT_COLUMNS]).astype("<f8", copy=False)
    return {int(run[a]): ints[:, a:b].tobytes() + floats[:, a:b].tobytes() for a, b in zip(starts, ends)}


def unpack_buckets(blobs: dict[int, bytes]) -> pl.DataFrame:
    """The bucket frame of :func:`pack_buckets`' blobs, bit for bit, in run_id order."""
    if not blobs:
        return empty_buckets()
    runs, ints, floats = [], [], []
    ni, nf = len(_INT_COLUMNS), len(_FLOAT_COLUMNS)
    for run_id in sorted(blobs):
        blob = blobs[run_id]
        b = len(blob) // _PACKED_BYTES
        runs.append(np.full(b, run_id, dtype=np.int64))
        ints.append(np.frombuffer(blob, "<i8", ni * b).reshape(ni, b))
        floats.append(np.frombuffer(blob, "<f8", nf * b, offset=8 * ni * b).reshape(nf, b))
    i, f = np.concatenate(ints, axis=1), np.concatenate(floats, axis=1)
    cols: dict[str, Any] = {"run_id": np.concatenate(runs)}
    cols.update({c: i[k] for k, c in enumerate(_INT_COLUMNS)})
    cols.update({c: f[k] for k, c in enumerate(_FLOAT_COLUMNS)})
    cols["mean_log"] = pl.Series(f[-1]).fill_nan(None)
    return pl.DataFrame(cols, schema=BUCKET_SCHEMA).select(list(BUCKET_SCHEMA))


def _check_per_decade(per_decade: int) -> None:
    if not 1 <= int(per_decade) <= 1000:
        raise InvalidSpecError(f"buckets per decade must be between 1 and 1000 (got {per_decade})")
