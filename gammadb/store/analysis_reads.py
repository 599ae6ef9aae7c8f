"""The reads the analyses need, as typed polars frames: the metric catalogue, finished runs with the
ends of their loss series, loss aggregates at a budget step, log-bucketed series and run selection.

Every per-step reduction runs in the database (``GROUP BY`` over a range of the (run_id, metric_id,
step) key), so a sweep of millions of steps arrives as one row per run or per bucket; the maths
on those rows (tail means, NaN rules, scales) stays in :mod:`gammadb.analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import polars as pl

from gammadb.errors import GammadbError
from gammadb.metrics import LOSS, TEST_LOSS, MetricKey
from gammadb.records import RUN_COLUMNS, WHERE_COLUMNS, Condition, RunStatus, value_bounds
from gammadb.schema import Run
from gammadb.store.engine import _chunks

_IN_CHUNK = 900  # bound parameters per IN (...) list: under SQLite's and PostgreSQL's limits
_BUCKET_CHUNK = 500  # run ids per IN (...) list of the bucketed read
#: Keeps FLOOR stable at exact decade boundaries (10, 100, ...); the polars reduction
#: (:func:`gammadb.analysis.downsample.bucket_index`) adds the same epsilon.
BUCKET_EPS = 1e-9
_FINITE_BOUND = 1e308  # |value| below this excludes +-inf (and PostgreSQL's NaN, which sorts above inf)

BUCKET_COLUMNS: dict[str, pl.DataType] = {
    "run_id": pl.Int64(), "bucket": pl.Int64(), "step_lo": pl.Int64(), "step_hi": pl.Int64(),
    "step": pl.Float64(), "n": pl.Int64(), "mean": pl.Float64(), "min": pl.Float64(), "max": pl.Float64(),
    "mean_log": pl.Float64(),
}


class AnalysisReadsMixin:
    """Reads of :class:`gammadb.store.Store` for :mod:`gammadb.analysis`."""

    # ------------------------------------------------------------------ metric catalogue
    def metric_id(self, name: str, layer: int = 0) -> Optional[int]:
        """The id of the stored series (name, layer), or None when the store has none (never creates
        one, unlike :meth:`metric_ids`)."""
        df = self.read("SELECT id FROM metrics WHERE name = ? AND layer = ?", [name, int(layer)])
        return None if df.is_empty() else int(df["id"][0])

    def metric_keys(self) -> pl.DataFrame:
        """Every series the store knows, sorted. Columns: name (String), layer (Int64)."""
        df = self.read("SELECT name, layer FROM metrics ORDER BY name, layer")
        return df.select(pl.col("name").cast(pl.String), pl.col("layer").cast(pl.Int64))

    def metric_layers(self, name: str) -> list[int]:
        """The layers stored for metric ``name``, ascending (0 = the whole model); [] when none."""
        df = self.read("SELECT layer FROM metrics WHERE name = ? ORDER BY layer", [name])
        return [int(v) for v in df["layer"].to_list()] if not df.is_empty() else []

    # ------------------------------------------------------------------ per-run loss table
    def finished_runs_with_loss_ends(self, sweep: str) -> pl.DataFrame:
        """One row per finished (completed or diverged) run of ``sweep``, by run_id, with the ends of
        its training-loss series (metric 'loss', layer 0) and its stored summary.

        Columns: run_id, the run columns (:data:`gammadb.records.RUN_COLUMNS`), gamma, eta, seed,
        status, diverged_at; from ``run_summaries`` (null without one) s_final_step, s_steps
        (steps_logged), s_final, s_min, s_tail (final, min and tail-mean loss), s_diverged (a NaN or
        inf at any stored step); first_step and
        max_step (the first and last logged loss step, null without any); initial_test (the logged
        test loss at the first loss step, null where not measured: not rescaled), initial_train (the
        loss at the first step; null for a NaN on SQLite, which stores NaN as NULL) and config (the
        run's stored config as JSON text). An unknown sweep gives an empty frame.
        """
        loss_id = self.metric_id(LOSS)
        loss_id = -1 if loss_id is None else loss_id
        test_id = self.metric_id(TEST_LOSS)
        finished = (RunStatus.COMPLETED.value, RunStatus.DIVERGED.value)
        cols = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        runs = self.read(
            f"SELECT r.id AS run_id, {cols}, r.gamma, r.eta, r.seed, r.status, r.diverged_at, "
            "u.final_step AS s_final_step, u.steps_logged AS s_steps, u.final_loss AS s_final, "
            "u.min_loss AS s_min, u.tail_mean_loss AS s_tail, u.diverged AS s_diverged, "
            "(SELECT MIN(v.step) FROM metric_values v WHERE v.run_id = r.id AND v.metric_id = ?) AS first_step, "
            "(SELECT MAX(v.step) FROM metric_values v WHERE v.run_id = r.id AND v.metric_id = ?) AS max_step, "
            "(SELECT t.value FROM metric_values t WHERE t.run_id = r.id AND t.metric_id = ? AND t.step = "
            "  (SELECT MIN(v.step) FROM metric_values v WHERE v.run_id = r.id AND v.metric_id = ?)) AS initial_test, "
            "(SELECT v.value FROM metric_values v WHERE v.run_id = r.id AND v.metric_id = ? "
            "  ORDER BY v.step LIMIT 1) AS initial_train, CAST(r.config AS TEXT) AS config "
            "FROM runs r JOIN sweeps s ON s.id = r.sweep_id LEFT JOIN run_summaries u ON u.run_id = r.id "
            "WHERE s.name = ? AND r.status IN (?, ?) ORDER BY r.id",
            [loss_id, loss_id, test_id or -1, loss_id, loss_id, sweep, *finished],
        )
        return runs.with_columns(
            *(pl.col(c).cast(_run_column_type(c)) for c in RUN_COLUMNS),
            *(pl.col(c).cast(pl.Int64) for c in ("run_id", "seed", "diverged_at", "s_final_step", "s_steps",
                                                  "first_step", "max_step")),
            *(pl.col(c).cast(pl.Float64) for c in ("gamma", "eta", "s_final", "s_min", "s_tail", "initial_test",
                                                    "initial_train")),
            pl.col("status").cast(pl.String), pl.col("config").cast(pl.String),
        )

    def loss_aggregates(self, run_ids: Sequence[int], budget: int, *, tail_after: int, want_min: bool = False,
                        want_max: bool = False) -> pl.DataFrame:
        """Aggregates of the training loss (metric 'loss', layer 0) of ``run_ids`` at step ``budget``,
        in the database: the value at the last step <= budget by a key lookup, the tail sums by
        GROUP BY over the window ``tail_after < step <= budget`` only (a range of the key), and, when
        asked, the extremes by one GROUP BY pass over the steps <= budget.

        Columns: run_id, last_step (null without a step <= budget), final_loss (the value there, as
        stored: SQLite stores a NaN as NULL), tail_sum, tail_n (non-null values), tail_rows (rows:
        tail_n < tail_rows means a NaN on SQLite), all null without a row in the window, and where
        asked min_loss, max_loss. One row per id of an existing run (the others have none).
        """
        loss_id = self.metric_id(LOSS)
        loss_id = -1 if loss_id is None else loss_id
        extremes = [c for c, w in (("min_loss", want_min), ("max_loss", want_max)) if w]
        parts = []
        for chunk in _chunks([int(r) for r in run_ids], _IN_CHUNK):
            marks = ", ".join("?" * len(chunk))
            last = self.read(
                "SELECT r.id AS run_id, "
                "(SELECT f.step FROM metric_values f WHERE f.run_id = r.id AND f.metric_id = ? AND f.step <= ? "
                " ORDER BY f.step DESC LIMIT 1) AS last_step, "
                "(SELECT f.value FROM metric_values f WHERE f.run_id = r.id AND f.metric_id = ? AND f.step <= ? "
                " ORDER BY f.step DESC LIMIT 1) AS final_loss "
                f"FROM runs r WHERE r.id IN ({marks})",
                [loss_id, budget, loss_id, budget, *chunk],
            )
            tail = self.read(
                "SELECT v.run_id, SUM(v.value) AS tail_sum, COUNT(v.value) AS tail_n, COUNT(*) AS tail_rows "
                f"FROM metric_values v WHERE v.metric_id = ? AND v.step > ? AND v.step <= ? AND v.run_id IN ({marks}) "
                "GROUP BY v.run_id",
                [loss_id, tail_after, budget, *chunk],
            )
            part = _cast_ints(last, "run_id", "last_step").join(
                _cast_ints(tail, "run_id", "tail_n", "tail_rows"), on="run_id", how="left")
            if extremes:
                # Only the aggregates asked for: this pass reads every step up to the budget. No NaN
                # check here: a run's values are finite before its diverged_at, which the importer and
                # the runners record (and the tail window above re-checks).
                wanted = [f"{f}(v.value) AS {f.lower()}_loss" for f, w in (("MIN", want_min), ("MAX", want_max)) if w]
                ext = self.read(
                    f"SELECT v.run_id, {', '.join(wanted)} "
                    f"FROM metric_values v WHERE v.metric_id = ? AND v.step <= ? AND v.run_id IN ({marks}) "
                    "GROUP BY v.run_id",
                    [loss_id, budget, *chunk],
                )
                part = part.join(_cast_ints(ext, "run_id"), on="run_id", how="left")
            parts.append(part)
        schema = {"run_id": pl.Int64, "last_step": pl.Int64, "final_loss": pl.Float64, "tail_sum": pl.Float64,
                  "tail_n": pl.Int64, "tail_rows": pl.Int64, **{c: pl.Float64 for c in extremes}}
        if not parts:
            return pl.DataFrame(schema=schema)
        agg = pl.concat(parts, how="diagonal_relaxed")
        return agg.select(pl.col(c).cast(t) for c, t in schema.items())

    def test_loss_at(self, run_ids: Sequence[int], budget: int) -> pl.DataFrame:
        """The logged test loss (metric 'test_loss', layer 0, as stored: not rescaled) at the last
        test evaluation at or before step ``budget``. Columns: run_id, test_loss (null where none; a
        NaN is null on SQLite). One row per id of an existing run."""
        test_id = self.metric_id(TEST_LOSS)
        test_id = -1 if test_id is None else test_id
        parts = []
        for chunk in _chunks([int(r) for r in run_ids], _IN_CHUNK):
            parts.append(self.read(
                "SELECT r.id AS run_id, (SELECT v.value FROM metric_values v WHERE v.run_id = r.id "
                " AND v.metric_id = ? AND v.step <= ? ORDER BY v.step DESC LIMIT 1) AS test_loss "
                f"FROM runs r WHERE r.id IN ({', '.join('?' * len(chunk))})",
                [test_id, budget, *chunk],
            ))
        if not parts:
            return pl.DataFrame(schema={"run_id": pl.Int64, "test_loss": pl.Float64})
        return pl.concat(parts, how="diagonal_relaxed").select(
            pl.col("run_id").cast(pl.Int64), pl.col("test_loss").cast(pl.Float64))

    # ------------------------------------------------------------------ log-bucketed series
    def bucketed_series(self, run_ids: Sequence[int], metric: MetricKey | str, per_decade: int,
                        max_step: Optional[int] = None) -> Optional[pl.DataFrame]:
        """One metric series of ``run_ids`` reduced in the database to one row per (run_id, bucket),
        bucket = floor(per_decade * log10(step) + 1e-9), over the finite values at 1 <= step
        (<= ``max_step``). None when the database cannot (a SQLite built without LN / FLOOR / EXP):
        the caller reduces :meth:`series` itself.

        Columns (:data:`BUCKET_COLUMNS`), sorted by run_id, bucket: run_id, bucket, step_lo, step_hi,
        step (geometric mean of the bucket's steps), n, mean, min, max, mean_log (mean of ln(value)
        over the positive values; null when none is positive).

        The SQL binds every value (run ids, metric name and layer, the log scale); nothing is
        formatted into it but the number of ``?`` placeholders.
        """
        key = MetricKey(metric) if isinstance(metric, str) else MetricKey(*metric)
        frames = []
        for chunk in _chunks([int(r) for r in run_ids], _BUCKET_CHUNK):
            try:
                frames.append(self._bucketed_chunk(chunk, key, per_decade, max_step))
            except GammadbError as exc:
                if "no such function" not in str(exc).lower():
                    raise
                return None
        if not frames:
            return pl.DataFrame(schema=BUCKET_COLUMNS)
        return pl.concat(frames).sort("run_id", "bucket")

    def _bucketed_chunk(self, run_ids: Sequence[int], key: MetricKey, per_decade: int,
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
        params: list[object] = [per_decade / math.log(10), BUCKET_EPS, key.name, int(key.layer),
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
        df = self.read(sql, params)
        if df.is_empty():
            return pl.DataFrame(schema=BUCKET_COLUMNS)
        df = df.rename({"v_mean": "mean", "v_min": "min", "v_max": "max"})
        return df.select([pl.col(c).cast(t) for c, t in BUCKET_COLUMNS.items()])

    # ------------------------------------------------------------------ run selection
    def run_ids_where(self, sweep: str, conditions: Sequence[Condition]) -> list[int]:
        """Ids (ascending) of the runs of ``sweep`` whose ``run_overview`` row satisfies every one of
        ``conditions`` (typed :class:`gammadb.records.Condition`; rendered by :func:`where_sql`)."""
        where, params = where_sql(conditions)
        ids = self.read(f"SELECT run_id FROM run_overview WHERE sweep = ? AND {where} ORDER BY run_id",
                        [sweep, *params])
        return [int(r) for r in ids["run_id"].to_list()]


_SQL_OPS = frozenset({"=", "<>", "<", "<=", ">", ">=", "IN"})


def where_sql(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """AND of the conditions as SQL over ``run_overview`` with ``?`` placeholders, and the parameters
    to bind. Columns and operators come from fixed sets (anything else is refused), values are always
    parameters; '=' and '<>' on a float column match within :data:`gammadb.records.REL_TOL`."""
    if not conditions:
        raise ValueError("where_sql needs at least one condition")
    parts: list[str] = []
    params: list[Any] = []
    for c in conditions:
        kind = WHERE_COLUMNS.get(c.column)
        if kind is None or c.op not in _SQL_OPS or not c.values:
            raise ValueError(f"not a run condition: {c!r}")
        if c.op == "IN":
            parts.append(f"{c.column} IN ({', '.join('?' * len(c.values))})")
            params.extend(c.values)
        elif kind is float and c.op in ("=", "<>"):  # gamma = 0.1 finds 0.1000000000001
            lo, hi = value_bounds(c.values[0])
            parts.append(f"{'NOT ' if c.op == '<>' else ''}({c.column} BETWEEN ? AND ?)")
            params.extend([lo, hi])
        else:
            parts.append(f"{c.column} {c.op} ?")
            params.append(c.values[0])
    return " AND ".join(parts), params


def _run_column_type(name: str) -> pl.DataType:
    """The polars type of a ``runs`` column, from the ORM's column type."""
    kind = Run.__table__.c[name].type.python_type
    return pl.Int64() if kind is int else pl.Float64() if kind is float else pl.String()


def _cast_ints(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    return df.with_columns(*(pl.col(c).cast(pl.Int64) for c in cols if c in df.columns))
