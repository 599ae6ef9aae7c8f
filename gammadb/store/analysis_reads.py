"""The reads the analyses need, as typed polars frames: the metric catalogue, finished runs with the
ends of their loss series, loss aggregates at a budget step, log-bucketed series and run selection.

Per-step values are read as whole chunks over a range of the (run_id, metric_id, first_step) key and
decoded with numpy (:func:`gammadb.store.chunks.read_series`: tens of millions of values a second), so
only the steps a question needs are read (a tail window, the steps up to a budget); the reductions
here are vectorised polars, and the maths on their results (tail means, NaN rules, scales) stays in
:mod:`gammadb.analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import polars as pl

from gammadb.metrics import LOSS, TEST_LOSS, MetricKey
from gammadb.records import RUN_COLUMNS, WHERE_COLUMNS, Condition, RunStatus, value_bounds
from gammadb.store import chunks
from gammadb.store.engine import _chunks

_IN_CHUNK = 900  # bound parameters per IN (...) list: under SQLite's and PostgreSQL's limits


class AnalysisReadsMixin:
    """Reads of :class:`gammadb.store.Store` for :mod:`gammadb.analysis`."""

    _metric_ids: dict[MetricKey, int]

    # ------------------------------------------------------------------ metric catalogue
    def metric_id(self, name: str, layer: int = 0) -> Optional[int]:
        """The id of the stored series (name, layer), or None when the store has none (never creates
        one, unlike :meth:`metric_ids`). A found id is kept for the store's life (ids never change;
        one read a lookup costs a new connection, 30-80 ms on PostgreSQL); a missing one is asked
        again, since a writer may create it."""
        key = MetricKey(name, int(layer))
        if key in self._metric_ids:
            return self._metric_ids[key]
        df = self.read("SELECT id FROM metrics WHERE name = ? AND layer = ?", [name, int(layer)])
        if df.is_empty():
            return None
        self._metric_ids[key] = int(df["id"][0])
        return self._metric_ids[key]

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
        (steps_logged), s_final, s_min, s_max, s_tail (final, min, largest finite and tail-mean loss;
        s_max is null in a summary written before migration 0006), s_diverged (a NaN or inf at any
        stored step); first_step and max_step (the first and last logged loss step, null without
        any); initial_test (the logged test loss at the first loss step, null where not measured:
        not rescaled), initial_train (the loss at the first step; null for a NaN on SQLite, which
        stores NaN as NULL) and config (the run's stored config as JSON text). An unknown sweep gives
        an empty frame.
        """
        loss_id = self.metric_id(LOSS)
        test_id = self.metric_id(TEST_LOSS)
        finished = (RunStatus.COMPLETED.value, RunStatus.DIVERGED.value)
        cols = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        runs = self.read(
            f"SELECT r.id AS run_id, {cols}, r.gamma, r.eta, r.seed, r.status, r.diverged_at, "
            "u.final_step AS s_final_step, u.steps_logged AS s_steps, u.final_loss AS s_final, "
            "u.min_loss AS s_min, u.max_loss AS s_max, u.tail_mean_loss AS s_tail, u.diverged AS s_diverged, "
            "CAST(r.config AS TEXT) AS config "
            "FROM runs r JOIN sweeps s ON s.id = r.sweep_id LEFT JOIN run_summaries u ON u.run_id = r.id "
            "WHERE s.name = ? AND r.status IN (?, ?) ORDER BY r.id",
            [sweep, *finished],
        )
        ids = [int(r) for r in runs["run_id"].to_list()] if not runs.is_empty() else []
        ends = self._series_ends(ids, loss_id)
        runs = runs.with_columns(pl.col("run_id").cast(pl.Int64)).join(ends, on="run_id", how="left")
        if test_id is not None and ids and not ends.is_empty():
            first = ends.drop_nulls("first_step")
            test = self.values_frame(ids, test_id, hi=int(first["first_step"].max()))
            initial_test = (test.join(first.select("run_id", pl.col("first_step").alias("step")), on=["run_id", "step"])
                            .select("run_id", pl.col("value").alias("initial_test")))
        else:
            initial_test = pl.DataFrame(schema={"run_id": pl.Int64, "initial_test": pl.Float64})
        runs = runs.join(initial_test, on="run_id", how="left")
        tail = ["first_step", "max_step", "initial_test", "initial_train", "config"]
        order = [c for c in runs.columns if c not in tail] + tail
        return runs.select(order).with_columns(
            *(pl.col(c).cast(RUN_COLUMN_TYPES[c]) for c in RUN_COLUMNS),
            *(pl.col(c).cast(pl.Int64) for c in ("run_id", "seed", "diverged_at", "s_final_step", "s_steps",
                                                  "first_step", "max_step")),
            *(pl.col(c).cast(pl.Float64) for c in ("gamma", "eta", "s_final", "s_min", "s_max", "s_tail", "initial_test",
                                                    "initial_train")),
            pl.col("status").cast(pl.String), pl.col("config").cast(pl.String),
        )

    # ------------------------------------------------------------------ chunk reads
    def values_frame(self, run_ids: Sequence[int], metric: int | MetricKey, *, lo: Optional[int] = None,
                     hi: Optional[int] = None) -> pl.DataFrame:
        """One series of ``run_ids`` (a metric id, or a key: none stored reads as empty) with
        ``lo <= step <= hi``: run_id, step (Int64), value (Float64, NaN as NaN), sorted by run_id, step."""
        metric_id = metric if isinstance(metric, int) else self.metric_id(metric.name, metric.layer)
        if metric_id is None or not run_ids:
            return pl.DataFrame(schema={"run_id": pl.Int64, "step": pl.Int64, "value": pl.Float64})
        got = self._series_arrays(run_ids, metric_id, lo=lo, hi=hi)
        return pl.DataFrame({"run_id": got["run_id"], "step": got["step"], "value": got["value"]})

    def _series_arrays(self, run_ids: Sequence[int], metric_id: int, *, lo: Optional[int] = None,
                       hi: Optional[int] = None) -> dict[str, np.ndarray]:
        """:meth:`values_frame`'s rows as numpy arrays (:func:`gammadb.store.chunks.read_series`)."""
        conn = self.raw_connection(read_only=True)
        try:
            return chunks.read_series(self.backend, conn, run_ids, [metric_id], lo=lo, hi=hi)
        finally:
            conn.close()

    def _series_ends(self, run_ids: Sequence[int], metric_id: Optional[int]) -> pl.DataFrame:
        """Per run: first_step and max_step of one series (from the chunk keys) and initial_train, its
        value at the first step (NaN as null, as SQLite always stored it)."""
        schema = {"run_id": pl.Int64, "first_step": pl.Int64, "max_step": pl.Int64, "initial_train": pl.Float64}
        if metric_id is None or not run_ids:
            return pl.DataFrame(schema=schema)
        parts = []
        for chunk in _chunks([int(r) for r in run_ids], _IN_CHUNK):
            parts.append(self.read(
                "SELECT run_id, MIN(first_step) AS first_step, MAX(first_step + n - 1) AS max_step "
                f"FROM metric_chunks WHERE metric_id = ? AND run_id IN ({', '.join('?' * len(chunk))}) GROUP BY run_id",
                [metric_id, *chunk]))
        ends = pl.concat(parts, how="diagonal_relaxed").select(pl.col(c).cast(pl.Int64) for c in ("run_id", "first_step", "max_step"))
        if ends.is_empty():
            return pl.DataFrame(schema=schema)
        heads = self.values_frame(ends["run_id"].to_list(), metric_id, hi=int(ends["first_step"].max()))
        first = (heads.join(ends.select("run_id", pl.col("first_step").alias("step")), on=["run_id", "step"])
                 .select("run_id", pl.col("value").fill_nan(None).alias("initial_train")))
        return ends.join(first, on="run_id", how="left").select(pl.col(c).cast(t) for c, t in schema.items())

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
        extremes = [c for c, w in (("min_loss", want_min), ("max_loss", want_max)) if w]
        schema = {"run_id": pl.Int64, "last_step": pl.Int64, "final_loss": pl.Float64, "tail_sum": pl.Float64,
                  "tail_n": pl.Int64, "tail_rows": pl.Int64, **{c: pl.Float64 for c in extremes}}
        ids = self._existing_runs(run_ids)
        if not ids:
            return pl.DataFrame(schema=schema)
        metric = loss_id if loss_id is not None else -1

        def per_run(got: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """The runs of ``got`` (sorted by run, step), their first rows and their last rows."""
            r = got["run_id"]
            if r.size == 0:
                return r, r, r
            starts = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
            return r[starts], starts, np.append(starts[1:], r.size) - 1

        def last_of(got: dict[str, np.ndarray]) -> pl.DataFrame:
            runs, _, ends = per_run(got)
            return pl.DataFrame({"run_id": runs, "last_step": got["step"][ends],
                                 "final_loss": pl.Series(got["value"][ends], dtype=pl.Float64).fill_nan(None)},
                                schema={"run_id": pl.Int64, "last_step": pl.Int64, "final_loss": pl.Float64})

        # Per run, in numpy over the rows in (run, step) order: the last row, and the extremes
        # (np.fmin/fmax skip NaN; a run of NaN only gives NaN, read as null). The tail's sums stay a
        # polars group_by over the window's rows (its summation order is the one the results had).
        got = self._series_arrays(ids, metric, lo=None if extremes else tail_after + 1, hi=budget)
        in_tail = got["step"] > tail_after
        values = pl.DataFrame({"run_id": got["run_id"][in_tail], "value": got["value"][in_tail]})
        not_nan = pl.col("value").filter(~pl.col("value").is_nan())
        tail = values.group_by("run_id").agg(not_nan.sum().alias("tail_sum"), not_nan.len().cast(pl.Int64).alias("tail_n"),
                                             pl.len().cast(pl.Int64).alias("tail_rows"))
        last = last_of(got)
        missing = sorted(set(ids) - set(last["run_id"].to_list()))
        if missing:  # nothing in the tail window: the last step before it
            last = pl.concat([last, last_of(self._series_arrays(missing, metric, hi=budget))])
        out = pl.DataFrame({"run_id": ids}, schema={"run_id": pl.Int64}).join(last, on="run_id", how="left")
        out = out.join(tail, on="run_id", how="left")
        if extremes:
            runs, starts, _ = per_run(got)
            ext = {"run_id": runs}
            with np.errstate(invalid="ignore"):
                if want_min:
                    ext["min_loss"] = pl.Series(np.fmin.reduceat(got["value"], starts) if runs.size else got["value"][:0],
                                                dtype=pl.Float64).fill_nan(None)
                if want_max:
                    ext["max_loss"] = pl.Series(np.fmax.reduceat(got["value"], starts) if runs.size else got["value"][:0],
                                                dtype=pl.Float64).fill_nan(None)
            out = out.join(pl.DataFrame(ext).with_columns(pl.col("run_id").cast(pl.Int64)), on="run_id", how="left")
        return out.select(pl.col(c).cast(t) for c, t in schema.items())

    def _existing_runs(self, run_ids: Sequence[int]) -> list[int]:
        ids = sorted({int(r) for r in run_ids})
        found: list[int] = []
        for chunk in _chunks(ids, _IN_CHUNK):
            df = self.read(f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            if not df.is_empty():
                found.extend(int(i) for i in df["id"].to_list())
        return sorted(found)

    def test_loss_at(self, run_ids: Sequence[int], budget: int) -> pl.DataFrame:
        """The logged test loss (metric 'test_loss', layer 0, as stored: not rescaled) at the last
        test evaluation at or before step ``budget``. Columns: run_id, test_loss (null where none; a
        NaN is null on SQLite). One row per id of an existing run."""
        test_id = self.metric_id(TEST_LOSS)
        ids = self._existing_runs(run_ids)
        frame = pl.DataFrame({"run_id": ids}, schema={"run_id": pl.Int64})
        values = self.values_frame(ids, test_id if test_id is not None else -1, hi=budget)
        last = values.group_by("run_id").agg(pl.col("value").last().fill_nan(None).alias("test_loss"))
        return frame.join(last, on="run_id", how="left").select(pl.col("run_id").cast(pl.Int64),
                                                                 pl.col("test_loss").cast(pl.Float64))

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


#: The polars type of each run column (:data:`gammadb.records.RUN_COLUMNS`): the ORM model's column
#: types (tests/store/test_analysis_reads.py holds them to gammadb.schema.Run), written out so a read
#: never imports the ORM.
RUN_COLUMN_TYPES: dict[str, pl.DataType] = {
    "model": pl.String(), "dataset": pl.String(), "loss_fn": pl.String(), "optimizer": pl.String(),
    "depth": pl.Int64(), "width": pl.Int64(), "batch_size": pl.Int64(),
}


def _cast_ints(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    return df.with_columns(*(pl.col(c).cast(pl.Int64) for c in cols if c in df.columns))
