"""The store's named reads, returned as polars frames (sweeps, runs, per-step series, any read query
through ADBC or sqlite3), the summaries lookup, and the ids of the metric series (created on first use,
cached per store)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlalchemy import select

from gammadb.errors import GammadbError, StoreUnavailableError
from gammadb.metrics import LOSS, MetricKey, kind_of
from gammadb.records import RunStatus, SummaryRecord
from gammadb.store import chunks
from gammadb.store.engine import _chunks, _one_line
from gammadb.urls import libpq_uri

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class ReadsMixin:
    """Reads of :class:`gammadb.store.Store`."""

    def sweeps_frame(self) -> pl.DataFrame:
        sql = (
            "SELECT s.id, s.name, s.code_version, s.created_at, COUNT(r.id) AS runs, "
            "SUM(CASE WHEN r.status = 'completed' THEN 1 ELSE 0 END) AS completed, "
            "SUM(CASE WHEN r.status = 'diverged' THEN 1 ELSE 0 END) AS diverged, "
            "SUM(CASE WHEN r.status IN ('pending', 'running', 'failed') THEN 1 ELSE 0 END) AS open "
            "FROM sweeps s LEFT JOIN runs r ON r.sweep_id = s.id "
            "GROUP BY s.id, s.name, s.code_version, s.created_at ORDER BY s.id"
        )
        return self.read(sql)

    def runs_frame(self, sweep: str | None = None, status: RunStatus | str | None = None) -> pl.DataFrame:
        """One row per run: hyper-parameters, status and summary (the ``run_overview`` view)."""
        where, params = [], []
        if sweep is not None:
            self.get_sweep(sweep)  # NotFoundError with a hint
            where.append("sweep = ?")
            params.append(sweep)
        if status is not None:
            where.append("status = ?")
            params.append(RunStatus(status).value)
        sql = "SELECT * FROM run_overview"
        if where:
            sql += " WHERE " + " AND ".join(where)
        df = self.read(sql + " ORDER BY run_id", params)
        floats = ["gamma", "eta", "initial_loss", "final_loss", "min_loss", "tail_mean_loss"]
        return df.with_columns(*(pl.col(c).cast(pl.Float64) for c in floats if c in df.columns))

    def metric_ids(self, keys: Iterable[MetricKey]) -> dict[MetricKey, int]:
        """Ids of the (name, layer) series, created on first use. Cached per store."""
        wanted = [MetricKey(*k) for k in keys]
        missing = [k for k in dict.fromkeys(wanted) if k not in self._metric_ids]
        if missing:
            for attempt in range(3):
                try:
                    with self.session_scope() as s:
                        known = ensure_metric_ids(s, missing)
                    self._metric_ids.update(known)
                    break
                except GammadbError:
                    if attempt == 2:
                        raise
        return {k: self._metric_ids[k] for k in wanted}

    def series(self, run_ids: Sequence[int] | None = None, *, sweep: str | None = None,
               metrics: Sequence[str] = (LOSS,), max_step: int | None = None) -> pl.DataFrame:
        """Per-step values, long format: run_id, metric, layer, step, value (NaN as NaN), sorted by
        run_id, metric, layer, step. Read as whole chunks and decoded in numpy."""
        if sweep is not None:
            sweep_id = self.get_sweep(sweep).id
            ids = self.read("SELECT id FROM runs WHERE sweep_id = ?", [sweep_id])["id"].to_list()
            run_ids = ids if run_ids is None else sorted(set(ids) & {int(r) for r in run_ids})
        catalogue = self.read("SELECT id, name, layer FROM metrics")
        if metrics:
            catalogue = catalogue.filter(pl.col("name").is_in(list(metrics))) if not catalogue.is_empty() else catalogue
        if catalogue.is_empty():
            return _empty_series()
        if run_ids is None:
            run_ids = self.read("SELECT id FROM runs")["id"].to_list()
        if not run_ids:
            return _empty_series()
        conn = self.raw_connection(read_only=True)
        try:
            got = chunks.read_series(self.backend, conn, [int(r) for r in run_ids],
                                     [int(i) for i in catalogue["id"].to_list()], hi=max_step)
        finally:
            conn.close()
        if got["step"].size == 0:
            return _empty_series()
        names = catalogue.select(pl.col("id").cast(pl.Int64).alias("metric_id"), pl.col("name").cast(pl.String).alias("metric"),
                                 pl.col("layer").cast(pl.Int64))
        df = pl.DataFrame({"run_id": got["run_id"], "metric_id": got["metric_id"], "step": got["step"],
                           "value": got["value"]})
        return (df.join(names, on="metric_id", how="left")
                .select("run_id", "metric", "layer", "step", "value")
                .sort("run_id", "metric", "layer", "step"))

    def summaries(self, run_ids: Sequence[int]) -> dict[int, SummaryRecord]:
        from gammadb.schema import RunSummary

        with self.session_scope() as s:
            out: dict[int, SummaryRecord] = {}
            for chunk in _chunks(list(run_ids), 500):
                for r in s.scalars(select(RunSummary).where(RunSummary.run_id.in_(chunk))):
                    out[r.run_id] = SummaryRecord(
                        r.run_id, r.initial_loss, r.final_loss, r.final_step, r.min_loss,
                        r.min_loss_step, r.tail_mean_loss, r.diverged, r.steps_logged, r.max_loss,
                    )
            return out

    def read(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run a read query written with ``?`` placeholders; the rows as a polars frame.

        PostgreSQL reads go through ADBC (Arrow, no Python objects per row). SQLite reads go through
        the sqlite3 driver on purpose: ADBC's SQLite driver carries its own copy of the SQLite
        library, and two copies in one process do not see each other's POSIX locks, so a process that
        writes with one and reads with the other can corrupt the WAL index (seen here: a worker
        killed by SIGBUS).
        """
        try:
            if self.backend == "postgresql":
                with self.adbc() as conn:
                    sql = _dollar_params(sql)
                    if params:
                        return pl.read_database(sql, conn, execute_options={"parameters": tuple(params)})
                    return pl.read_database(sql, conn)
            conn = self.raw_connection(read_only=True)
            try:
                cur = conn.execute(sql, tuple(params))
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            finally:
                conn.close()
            if not rows:
                return pl.DataFrame(schema={n: pl.Null for n in names})
            return pl.DataFrame(dict(zip(names, map(list, zip(*rows)))), strict=False)
        except GammadbError:
            raise
        except Exception as exc:  # driver errors of either backend
            raise GammadbError(f"query failed: {_one_line(exc)}") from None

    @contextlib.contextmanager
    def adbc(self) -> Iterator[Any]:
        """An ADBC connection to a PostgreSQL store (see :meth:`read` for why not SQLite)."""
        if self.backend != "postgresql":
            raise GammadbError("ADBC connections are used for PostgreSQL stores only")
        try:
            try:
                import adbc_driver_postgresql.dbapi as adbc_pg
            except ImportError:
                raise StoreUnavailableError(
                    "PostgreSQL reads need adbc-driver-postgresql: pip install 'gammadb[postgres]'"
                ) from None
            conn = adbc_pg.connect(libpq_uri(self.url))
        except GammadbError:
            raise
        except Exception as exc:
            raise StoreUnavailableError(f"cannot open {self.display_url}: {_one_line(exc)}") from None
        try:
            yield conn
        finally:
            conn.close()


def _dollar_params(sql: str) -> str:
    out, n = [], 0
    for ch in sql:
        if ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def _empty_series() -> pl.DataFrame:
    return pl.DataFrame(schema={"run_id": pl.Int64, "metric": pl.String, "layer": pl.Int64,
                                "step": pl.Int64, "value": pl.Float64})


def ensure_metric_ids(s: Session, keys: Iterable[MetricKey]) -> dict[MetricKey, int]:
    """Every series id the store knows, with ``keys`` created inside the session's transaction where
    missing (so a transaction that fails adds none)."""
    from gammadb.schema import Metric

    known = {MetricKey(n, l): i for n, l, i in s.execute(select(Metric.name, Metric.layer, Metric.id))}
    for k in keys:
        if k not in known:
            m = Metric(name=k.name, layer=k.layer, kind=kind_of(k.name).value)
            s.add(m)
            s.flush()
            known[k] = m.id
    return known
