"""Per-curve reduction of per-step series onto a log-spaced step grid, as the analyses and charts
read it.

A sweep can hold thousands of runs of 10^5 steps; neither the curve analyses nor Altair should see
10^8 rows. The series are reduced to buckets of equal width in log10(step) (the maths and the cache's
packing are :mod:`gammadb.buckets`): here they are read, through the store's cache of bucketed
series where it holds them and otherwise as whole chunks decoded in numpy
(:meth:`gammadb.store.Store.values_frame`, in run and step order), and aggregated into the seed
bands a chart draws. Also here: the selection of runs (``--where``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

from gammadb.analysis.clock import tau_expr
from gammadb.analysis.shared import scope_of
from gammadb.buckets import (
    _PACKED_BYTES,
    BUCKET_LAYOUT,
    DEFAULT_PER_DECADE,
    _check_per_decade,
    bucket_frames,
    empty_buckets,
    merge_buckets,
    pack_buckets,
    unpack_buckets,
)
from gammadb.errors import InvalidSpecError
from gammadb.metrics import MetricKey
from gammadb.records import RUN_COLUMNS, WHERE_COLUMNS, Condition

if TYPE_CHECKING:
    from gammadb.store import Store

_CHUNK = 500  # run ids per series read


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
    read, factor = bands_grid(runs, per_decade, max_rows)
    buckets = merge_buckets(bucketed_series(store, runs["run_id"].to_list(), metric, read), factor)
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


def bands_grid(runs: pl.DataFrame, per_decade: int = DEFAULT_PER_DECADE, max_rows: int = 20_000) -> tuple[int, int]:
    """The grid :func:`curve_bands` reads for ``runs`` and the factor it merges its buckets by
    (:func:`gammadb.buckets.merge_buckets`): ``per_decade`` itself where the grid of
    :func:`bands_per_decade` divides it (always, for 40), so a chart of any size reads the grid the
    store caches; else that grid, read as it is."""
    coarse = bands_per_decade(runs, per_decade, max_rows)
    return (per_decade, per_decade // coarse) if per_decade % coarse == 0 else (coarse, 1)


def _num(v: float) -> str:
    return f"{v:g}"
