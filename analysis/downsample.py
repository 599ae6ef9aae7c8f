"""Per-curve reduction of per-step series onto a log-spaced step grid.

A sweep can hold thousands of runs of 10^5 steps; neither the curve analyses nor Altair should see
10^8 rows. Every curve is cut into buckets of equal width in log10(step) (``per_decade`` buckets a
decade, shared by all curves, so curves of different lengths land on the same grid) and each bucket
keeps its count, mean, min, max (spikes stay visible), the mean of ln(value) (what the log-loss
analyses smooth) and the geometric mean of its steps. The store reads the series as whole chunks
decoded in numpy (:meth:`gammadb.store.Store.values_frame`, in run and step order) and the reduction
runs here, over contiguous stretches (:func:`bucket_frames`).

Only finite values at step >= 1 are bucketed: step 0 has no place on a log axis, NaN/inf mark a
divergence (the run's ``diverged_at`` says where).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis.clock import tau_expr
from gammadb.analysis.shared import scope_of
from gammadb.errors import InvalidSpecError
from gammadb.metrics import MetricKey
from gammadb.records import RUN_COLUMNS, WHERE_COLUMNS, Condition

if TYPE_CHECKING:
    from gammadb.store import Store

DEFAULT_PER_DECADE = 40  # 0.025 decades a bucket: finer than any smoothing the analyses apply
_EPS = 1e-9  # keeps FLOOR stable at exact decade boundaries (10, 100, ...)
_CHUNK = 500  # run ids per series read

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
    that), which still serves the rare grid whose buckets are few and very long.
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
        if kn.max() > max(_LOOP_MAX, kept // 256):  # few, very long buckets: numpy would loop too long
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


_LOOP_MAX = 2048  # numpy steps a bucket may take; longer buckets, if many, go to polars (old speed)


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


def bucketed_series(store: "Store", run_ids: Sequence[int], metric: MetricKey | str,
                    per_decade: int = DEFAULT_PER_DECADE, max_step: Optional[int] = None) -> pl.DataFrame:
    """:func:`bucket_frame` of one metric series of ``run_ids`` (layer 0 where ``metric`` is a name),
    read ``_CHUNK`` runs at a time, so memory holds one slice of the raw values at once (inside
    :func:`gammadb.analysis.shared.shared_reads`, each run's series is read once for the whole block)."""
    return bucketed_grids(store, run_ids, metric, (per_decade,), max_step)[per_decade]


def bucketed_grids(store: "Store", run_ids: Sequence[int], metric: MetricKey | str, per_decades: Sequence[int],
                   max_step: Optional[int] = None) -> dict[int, pl.DataFrame]:
    """:func:`bucketed_series` on several grids ({per_decade: frame}) from one read of the values
    (a chart's curves and its plateau marks are bucketed on different grids)."""
    grids = list(dict.fromkeys(int(p) for p in per_decades))
    for p in grids:
        _check_per_decade(p)
    key = metric if isinstance(metric, MetricKey) else MetricKey(metric, 0)
    ids = list(dict.fromkeys(int(r) for r in run_ids))
    scope = scope_of(store)
    if scope is None:
        return _read_grids(store, ids, key, grids, max_step)
    # buckets are per run, so runs already bucketed in this scope are served by filtering (exact);
    # the others are read once, for every grid asked
    have = {p: scope.buckets.get(("buckets", key, p, max_step), (frozenset(), empty_buckets())) for p in grids}
    missing = [r for r in ids if any(r not in have[p][0] for p in grids)]
    if missing:
        fresh = _read_grids(store, missing, key, grids, max_step)
        for p in grids:
            covered, frame = have[p]
            new = fresh[p].filter(~pl.col("run_id").is_in(list(covered))) if covered else fresh[p]
            have[p] = (covered | frozenset(missing), pl.concat([frame, new]).sort("run_id", "bucket"))
            scope.buckets[("buckets", key, p, max_step)] = have[p]
    return {p: have[p][1] if have[p][0] == frozenset(ids) else have[p][1].filter(pl.col("run_id").is_in(ids))
            for p in grids}


def _read_grids(store: "Store", ids: list[int], key: MetricKey, grids: list[int],
                max_step: Optional[int]) -> dict[int, pl.DataFrame]:
    """The buckets of ``ids`` on each grid: from the store's cache where it holds them for the
    series as it is now (whole series only), the others computed from the series and cached."""
    metric_id = store.metric_id(key.name, key.layer)
    if not ids or metric_id is None:
        return {p: empty_buckets() for p in grids}
    hits: dict[int, dict[int, bytes]] = {p: {} for p in grids}
    versions: dict[int, dict[int, int]] = {p: {} for p in grids}
    if max_step is None:  # the versions are read before the series (see gammadb.store.bucket_cache)
        for p in grids:
            hits[p], versions[p] = store.cached_buckets(ids, metric_id, p, BUCKET_LAYOUT)
            hits[p] = {r: b for r, b in hits[p].items() if len(b) % _PACKED_BYTES == 0}  # else: recompute
    missing = [r for r in ids if any(r not in hits[p] for p in grids)]
    # no lo=1: bucket_frames leaves step 0 out itself, and a bound makes the store copy every array
    parts = [bucket_frames(store.values_frame(missing[i:i + _CHUNK], metric_id, hi=max_step), grids)
             for i in range(0, len(missing), _CHUNK)]
    out = {}
    for p in grids:
        fresh = pl.concat([part[p] for part in parts]) if parts else empty_buckets()
        if hits[p]:
            fresh = fresh.filter(~pl.col("run_id").is_in(list(hits[p])))
        if versions[p] and not fresh.is_empty():
            packed = pack_buckets(fresh)
            store.cache_buckets(metric_id, p, BUCKET_LAYOUT,
                                [(r, v, packed[r]) for r, v in versions[p].items() if r in packed])
        out[p] = pl.concat([unpack_buckets(hits[p]), fresh]).sort("run_id", "bucket") if hits[p] else fresh.sort(
            "run_id", "bucket")
    return out


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
    per_decade under ``max_rows``: a chart of thousands of curves stays a few thousand rows. It is a
    divisor of ``per_decade`` where one fits (40: 40, 20, 10, 8, 5 or 4), so selections of any size
    share a few grids, and the store caches a few bucketed series a run, not one per selection."""
    if n_curves <= 0 or decades <= 0:
        return per_decade
    fit = max(4, min(per_decade, int(max_rows / (n_curves * max(decades, 1.0)))))
    return next((d for d in range(fit, 3, -1) if per_decade % d == 0), fit)


def _check_per_decade(per_decade: int) -> None:
    if not 1 <= int(per_decade) <= 1000:
        raise InvalidSpecError(f"buckets per decade must be between 1 and 1000 (got {per_decade})")


# ---------------------------------------------------------------------------------------- run selection
_OPS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN"}


def _split_and(text: str) -> list[str]:
    parts, buf, quote, i = [], [], None, 0
    low = text.lower()
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            buf.append(ch)
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif low.startswith(" and ", i):
            parts.append("".join(buf))
            buf = []
            i += 5
            continue
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise InvalidSpecError(f"unbalanced quote in --where {text!r}")
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


_COND = re.compile(r"^(?P<col>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|!=|<>|==|=|<|>|\s+in\s+|\s+IN\s+)\s*(?P<val>.+)$")


def parse_where(text: str) -> list[Condition]:
    """Parse ``"gamma > 10"``, ``"depth = 3 and eta <= 0.1"``, ``"model in (mlp, toy)"``.

    Columns must be in :data:`WHERE_COLUMNS`; values are converted to the column's type and later
    bound as parameters, so a condition can never change the query's shape.
    """
    conds = []
    for part in _split_and(text):
        m = _COND.match(part)
        if m is None:
            raise InvalidSpecError(f"cannot parse --where {part!r}: write 'column op value', op one of "
                                   "= != < <= > >= in (e.g. \"gamma > 10\", \"model in (mlp, toy)\")")
        col = m["col"].lower()
        if col not in WHERE_COLUMNS:
            raise InvalidSpecError(f"--where column {m['col']!r} is not allowed: use one of {', '.join(WHERE_COLUMNS)}")
        op = _OPS[m["op"].strip().lower()]
        raw = m["val"].strip()
        if op == "IN":
            if not (raw.startswith("(") and raw.endswith(")")):
                raise InvalidSpecError(f"--where {part!r}: 'in' takes a list in parentheses, e.g. (10, 100)")
            items = [x.strip() for x in _split_commas(raw[1:-1])]
            if not items or any(not x for x in items):
                raise InvalidSpecError(f"--where {part!r}: empty list item")
            values = tuple(_typed(col, x) for x in items)
        else:
            values = (_typed(col, raw),)
        conds.append(Condition(col, op, values))
    if not conds:
        raise InvalidSpecError("empty --where condition")
    return conds


def _split_commas(text: str) -> list[str]:
    out, buf, quote = [], [], None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
            buf.append(ch)
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch == ",":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def _typed(col: str, raw: str) -> Any:
    kind = WHERE_COLUMNS[col]
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        raw_s = raw[1:-1]
        quoted = True
    else:
        raw_s, quoted = raw, False
    if kind is str:
        if not quoted and not re.fullmatch(r"[A-Za-z0-9_.\-+]+", raw_s):
            raise InvalidSpecError(f"--where {col}: quote the value {raw!r}")
        return raw_s
    try:
        v = float(raw_s)
    except ValueError:
        raise InvalidSpecError(f"--where {col} needs a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise InvalidSpecError(f"--where {col} needs a finite number, got {raw!r}")
    if kind is int:
        if v != int(v):
            raise InvalidSpecError(f"--where {col} needs an integer, got {raw!r}")
        return int(v)
    return v


def select_runs(store: "Store", sweep: str, where: Sequence[str] = (),
                run_ids: Optional[Sequence[int]] = None) -> pl.DataFrame:
    """The sweep's runs frame (``Store.runs_frame``) restricted by ``--where`` texts and run ids."""
    runs = store.runs_frame(sweep)
    conds = [c for text in where for c in parse_where(text)]
    if conds:
        matched = runs.filter(pl.col("run_id").is_in(store.run_ids_where(sweep, conds)))
        if matched.is_empty() and not runs.is_empty():
            raise InvalidSpecError(_no_match(sweep, where, conds, runs))
        runs = matched
    if run_ids:
        wanted = [int(r) for r in run_ids]
        missing = sorted(set(wanted) - set(runs["run_id"].to_list()))
        if missing and not conds:
            raise InvalidSpecError(f"runs {', '.join(map(str, missing))} are not in sweep {sweep!r}")
        runs = runs.filter(pl.col("run_id").is_in(wanted))
    return runs


def _no_match(sweep: str, where: Sequence[str], conds: Sequence[Condition], runs: pl.DataFrame) -> str:
    """Why a --where found nothing: the values the sweep holds for each column it names."""
    hints = []
    for col in dict.fromkeys(c.column for c in conds):
        if col not in runs.columns:
            continue
        values = runs[col].drop_nulls().unique().sort().to_list()
        shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in values[:12]]
        more = f", ... ({len(values)} in all)" if len(values) > 12 else ""
        hints.append(f"{col} values present: {', '.join(shown) or 'none'}{more}")
    return (f"no run of sweep {sweep!r} matches {' and '.join(where)}"
            + (f"; {'; '.join(hints)}" if hints else ""))


# ---------------------------------------------------------------------------------------- curve bands
CURVE_KEYS = (*RUN_COLUMNS, "gamma", "eta")


def curve_bands(store: "Store", runs: pl.DataFrame, metric: MetricKey, *,
                per_decade: int = DEFAULT_PER_DECADE, max_rows: int = 20_000) -> pl.DataFrame:
    """Seed-mean curves with bands for a chart: one row per (curve, bucket), where a curve is all
    runs sharing everything but the seed. Columns: the varying run columns, gamma, eta, series (a
    label), bucket, step, tau (eta step / gamma), mean, lo, hi, n_runs. Buckets per decade are
    lowered (to >= 4) so that the frame stays under ``max_rows`` rows."""
    if runs.is_empty():
        raise InvalidSpecError("no runs match the selection")
    keys = [c for c in CURVE_KEYS if c in runs.columns]
    per_decade = bands_per_decade(runs, per_decade, max_rows)
    buckets = bucketed_series(store, runs["run_id"].to_list(), metric, per_decade)
    bands = seed_bands(buckets, runs, keys)
    shown = [c for c in keys if c not in ("gamma", "eta") and runs[c].n_unique() > 1]
    label = pl.concat_str(
        [pl.format("γ={} η={}", pl.col("gamma").map_elements(_num, return_dtype=pl.String),
                   pl.col("eta").map_elements(_num, return_dtype=pl.String))]
        + [pl.format(f" {c}={{}}", pl.col(c).cast(pl.String).fill_null("?")) for c in shown])
    return bands.with_columns(label.alias("series"), tau_expr())


def bands_per_decade(runs: pl.DataFrame, per_decade: int = DEFAULT_PER_DECADE, max_rows: int = 20_000) -> int:
    """The grid :func:`curve_bands` buckets ``runs`` on: :func:`rows_budget_per_decade` over its curves
    (runs sharing everything but the seed) and the decades of steps the runs reached."""
    keys = [c for c in CURVE_KEYS if c in runs.columns]
    n_curves = runs.select(keys).unique().height
    steps = runs["steps_done"].fill_null(1).clip(lower_bound=1)
    decades = math.log10(float(steps.max())) + 0.1 if runs.height else 1.0
    return rows_budget_per_decade(n_curves, decades, max_rows, per_decade)


def _num(v: float) -> str:
    return f"{v:g}"
