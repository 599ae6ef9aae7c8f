"""The store's all-or-nothing import: one transaction writes an import's sweep, runs, metric names,
values, run statuses and summaries, so a failed or killed import leaves the store as it was.

Called through :meth:`gammadb.store.Store.import_runs`. Runs are found by their point key (the
digest of hyper-parameters and seed, :meth:`gammadb.records.RunSpec.point_key`), so a later file
extends the runs an earlier one created. Values of runs created by this import go straight into
``metric_values`` through the driver's bulk path (sqlite3 ``executemany`` / PostgreSQL ``COPY``);
values of runs that existed go first into a temporary staging table in the same transaction, where
one join against ``metric_values`` finds every (run, metric, step) stored with another value before
anything is merged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import polars as pl
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.metrics import LOSS, MetricKey
from gammadb.records import RunSpec, RunStatus
from gammadb.schema import Metric, MetricValue, Run, Sweep
from gammadb.store.engine import _chunks, _one_line, _unavailable, utcnow
from gammadb.store.reads import ensure_metric_ids
from gammadb.store.summaries import _replace_summaries, summarize_losses

# Stage columns: the file's row (for messages), then the metric_values key and value. Fixed SQL
# text, no user input: every value is a bound parameter or goes through COPY.
_STAGE = {
    "sqlite": ("CREATE TEMP TABLE import_stage "
               "(file_row INTEGER, run_id INTEGER, metric_id INTEGER, step INTEGER, value REAL)"),
    "postgresql": ("CREATE TEMP TABLE import_stage "
                   "(file_row int8, run_id int4, metric_id int2, step int8, value float8) ON COMMIT DROP"),
}
_JOIN = ("FROM import_stage s JOIN metric_values v "
         "ON v.run_id = s.run_id AND v.metric_id = s.metric_id AND v.step = s.step ")
# A stored value differs from the file's: NaN equals NaN (SQLite holds NaN as NULL; PostgreSQL's
# float8 NaN = NaN is true, and a NULL there also means NaN).
_DIFFERS = {"sqlite": "WHERE s.value IS NOT v.value ",
            "postgresql": "WHERE COALESCE(v.value, 'NaN') IS DISTINCT FROM COALESCE(s.value, 'NaN') "}
# (SQLite needs the WHERE to parse an upsert of a SELECT.)
_MERGE = ("INSERT INTO metric_values (run_id, metric_id, step, value) SELECT run_id, metric_id, step, value "
          "FROM import_stage WHERE true ORDER BY run_id, metric_id, step ON CONFLICT (run_id, metric_id, step) ")
_REPLACE = {"sqlite": "DO UPDATE SET value = excluded.value", "postgresql": "DO UPDATE SET value = EXCLUDED.value"}
_PARAM = {"sqlite": "?", "postgresql": "%s"}
_BATCH = 100_000


class ValueConflictError(InvalidSpecError):
    """The store already holds another value at a (run, metric, step) of the import."""

    def __init__(self, row: int, key: MetricKey, step: int, stored: float, incoming: float, count: int) -> None:
        self.row, self.key, self.step, self.stored, self.incoming, self.count = row, key, step, stored, incoming, count
        super().__init__(f"row {row}: {key.name} (layer {key.layer}) at step {step} is {stored!r} in the store "
                         f"and {incoming!r} in the file ({count} such values)")


@dataclasses.dataclass(frozen=True)
class ImportResult:
    run_ids: list[int]  # in ``specs`` order
    new_runs: int
    values: int  # values in the file (written, or already stored with the same value)
    replaced: int  # stored values the file overwrote (``replace=True``)
    diverged: int  # runs diverged after the import (over all their stored steps)


def import_runs(store: Any, sweep: str, sweep_spec: Mapping[str, Any], specs: Sequence[RunSpec],
                keys: Sequence[MetricKey], values: pl.DataFrame, *, replace: bool = False) -> ImportResult:
    """Write one import in one transaction.

    ``values`` has columns ``row`` (the file's row, for messages), ``run_idx`` (into ``specs``),
    ``key_idx`` (into ``keys``), ``step`` and ``value`` (NaN kept), one row per (run, metric, step).
    A value that differs from a stored one raises :class:`ValueConflictError` and writes nothing,
    unless ``replace``. The runs' status, steps and summaries are recomputed over all their stored
    steps, so a file of later steps extends runs.
    """
    if not sweep or len(sweep) > 200:
        raise InvalidSpecError("a sweep name must have 1 to 200 characters")
    with store.session_scope() as s:
        sweep_id = _sweep_id(s, sweep, sweep_spec)
        run_ids, new_ids = _run_ids(s, sweep_id, specs)
        metric_ids = _metric_ids(s, keys)
        staged = values.select(
            pl.col("row").cast(pl.Int64),
            pl.col("run_idx").replace_strict(list(range(len(run_ids))), run_ids, return_dtype=pl.Int64).alias("run_id"),
            pl.col("key_idx").replace_strict(list(range(len(keys))), [metric_ids[k] for k in keys],
                                             return_dtype=pl.Int64).alias("metric_id"),
            pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64),
        )
        raw = s.connection().connection.dbapi_connection
        try:
            fresh = staged.filter(pl.col("run_id").is_in(new_ids))
            if not fresh.is_empty():  # runs created just now hold nothing that could differ
                _insert(store.backend, raw, fresh.drop("row").sort("run_id", "metric_id", "step"))
            replaced = _merge(store.backend, raw, staged.filter(~pl.col("run_id").is_in(new_ids)), keys,
                              metric_ids, replace=replace)
            diverged = _finish(s, store.backend, raw, run_ids)
        except GammadbError:
            raise
        except Exception as exc:  # driver errors of either backend, raised by the raw cursor
            if "operational" in type(exc).__name__.lower():
                raise _unavailable(store, exc) from None
            raise GammadbError(f"import failed: {_one_line(exc)}") from None
    return ImportResult(run_ids=run_ids, new_runs=len(new_ids), values=staged.height, replaced=replaced,
                        diverged=diverged)


def _sweep_id(s: Session, name: str, spec: Mapping[str, Any]) -> int:
    from gammadb import code_version

    sweep_id = s.scalar(select(Sweep.id).where(Sweep.name == name))
    if sweep_id is None:
        row = Sweep(name=name, spec=dict(spec), code_version=code_version())
        s.add(row)
        s.flush()
        sweep_id = row.id
    return sweep_id


def _run_ids(s: Session, sweep_id: int, specs: Sequence[RunSpec]) -> tuple[list[int], list[int]]:
    """The ids of the runs of ``specs`` (by point key), and of those among them created now (pending)."""
    keys = [spec.point_key() for spec in specs]
    found = _ids_by_key(s, sweep_id, keys)
    missing = {k: spec for k, spec in zip(keys, specs) if k not in found}
    if missing:
        s.execute(insert(Run), [
            dict(sweep_id=sweep_id, point_key=k, model=spec.model, dataset=spec.dataset, loss_fn=spec.loss_fn,
                 optimizer=spec.optimizer, depth=spec.depth, width=spec.width, batch_size=spec.batch_size,
                 gamma=spec.gamma, eta=spec.eta, seed=spec.seed, dtype=spec.dtype, device=spec.device,
                 config=spec.config, status=RunStatus.PENDING, steps_planned=spec.steps_planned, steps_done=0)
            for k, spec in missing.items()
        ])
        for chunk in _chunks(list(missing), 500):
            found.update(_ids_by_key(s, sweep_id, chunk))
    return [found[k] for k in keys], [found[k] for k in missing]


def _ids_by_key(s: Session, sweep_id: int, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in _chunks(list(keys), 500):
        q = select(Run.point_key, Run.id).where(Run.sweep_id == sweep_id, Run.point_key.in_(chunk))
        out.update({k: i for k, i in s.execute(q)})
    return out


def _metric_ids(s: Session, keys: Sequence[MetricKey]) -> dict[MetricKey, int]:
    """Ids of the series, created inside the import's transaction (so a failed import adds none)."""
    known = ensure_metric_ids(s, keys)
    return {k: known[k] for k in keys}


def _insert(backend: str, raw: Any, rows: pl.DataFrame) -> None:
    """Append (run_id, metric_id, step, value) rows to metric_values (keys known to be new)."""
    _bulk(backend, raw, "metric_values (run_id, metric_id, step, value)", rows)


def _merge(backend: str, raw: Any, staged: pl.DataFrame, keys: Sequence[MetricKey],
           metric_ids: Mapping[MetricKey, int], *, replace: bool) -> int:
    """Write values of runs that existed before: refuse (or with ``replace`` overwrite, and count)
    the ones that differ from stored values. Returns how many were overwritten."""
    if staged.is_empty():
        return 0
    cur = raw.cursor()
    cur.execute("DROP TABLE IF EXISTS import_stage")
    cur.execute(_STAGE[backend])
    _bulk(backend, raw, "import_stage (file_row, run_id, metric_id, step, value)", staged)
    if backend == "postgresql":
        cur.execute("ANALYZE import_stage")  # a temporary table is never analysed by itself
    cur.execute("SELECT COUNT(*) " + _JOIN + _DIFFERS[backend])
    differing = int(cur.fetchone()[0])
    if differing and not replace:
        cur.execute("SELECT s.file_row, s.metric_id, s.step, v.value, s.value " + _JOIN + _DIFFERS[backend]
                    + "ORDER BY s.file_row, s.metric_id LIMIT 1")
        row, metric_id, step, stored, incoming = cur.fetchone()
        key = next(k for k in keys if metric_ids[k] == metric_id)
        raise ValueConflictError(int(row), key, int(step), _nan(stored), _nan(incoming), differing)
    cur.execute(_MERGE + (_REPLACE[backend] if replace else "DO NOTHING"))
    cur.execute("DROP TABLE import_stage")
    return differing


def _bulk(backend: str, raw: Any, target: str, rows: pl.DataFrame) -> None:
    """Append a frame's rows (columns in ``target``'s order) through the driver's bulk path."""
    cur = raw.cursor()
    if backend == "sqlite":
        sql = f"INSERT INTO {target} VALUES ({', '.join('?' * rows.width)})"
        for batch in rows.iter_slices(_BATCH):
            cur.executemany(sql, batch.iter_rows())  # a NaN binds as NULL, SQLite's NaN
        return
    # CSV keeps every float exactly (shortest round-trip digits; NaN, inf and -inf as PostgreSQL reads them).
    with cur.copy(f"COPY {target} FROM STDIN (FORMAT CSV)") as cp:
        for batch in rows.iter_slices(_BATCH):
            cp.write(batch.write_csv(include_header=False))


def _finish(s: Session, backend: str, raw: Any, run_ids: Sequence[int]) -> int:
    """Status, steps and summary of each run over all its stored steps. Returns how many diverged."""
    loss_id = s.scalar(select(Metric.id).where(Metric.name == LOSS, Metric.layer == 0))
    now = utcnow()
    diverged = 0
    cur = raw.cursor()
    for chunk in _chunks(list(dict.fromkeys(run_ids)), 400):
        last = dict(s.execute(select(MetricValue.run_id, func.max(MetricValue.step))
                              .where(MetricValue.run_id.in_(chunk)).group_by(MetricValue.run_id)).all())
        planned = dict(s.execute(select(Run.id, Run.steps_planned).where(Run.id.in_(chunk))).all())
        # The loss series through the driver: the hot read of an import (bound parameters only).
        p = _PARAM[backend]
        cur.execute(f"SELECT run_id, step, value FROM metric_values WHERE metric_id = {p} "
                    f"AND run_id IN ({', '.join([p] * len(chunk))})", [loss_id or -1, *chunk])
        loss = pl.DataFrame(cur.fetchall(), schema={"run_id": pl.Int64, "step": pl.Int64, "value": pl.Float64},
                            orient="row").with_columns(pl.col("value").fill_null(math.nan))
        first_bad = dict(loss.filter(~pl.col("value").is_finite()).group_by("run_id")
                         .agg(pl.col("step").min()).iter_rows())
        ends = []
        for run_id in chunk:
            at: Optional[int] = first_bad.get(run_id)
            done = int(last.get(run_id) or 0)
            diverged += at is not None
            ends.append({"id": run_id, "status": RunStatus.DIVERGED if at is not None else RunStatus.COMPLETED,
                         "steps_done": done, "steps_planned": max(done, planned[run_id]), "diverged_at": at,
                         "error": None, "finished_at": now, "heartbeat_at": now})
        s.execute(update(Run), ends)
        _replace_summaries(s, summarize_losses(loss, chunk), now)
    return diverged


def _nan(v: Optional[float]) -> float:
    return math.nan if v is None else float(v)
