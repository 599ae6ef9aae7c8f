"""The store: the only module that opens a Session or a database connection.

Every public method is one transaction (``session_scope``); driver errors become gammadb errors.
Bulk per-step writes go through :mod:`gammadb.writer` (driver executemany / COPY); bulk reads go
through ADBC straight into polars. The ORM handles the small tables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import polars as pl
from sqlalchemy import create_engine, delete, event, select, text, update
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from gammadb import __version__
from gammadb.errors import (
    GammadbError,
    InvalidSpecError,
    NotFoundError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    StoreUnavailableError,
)
from gammadb.metrics import LOSS, MetricKey, kind_of
from gammadb.records import RunRecord, RunSpec, SummaryRecord, SweepRecord
from gammadb.schema import Metric, MetricValue, Run, RunStatus, RunSummary, Sweep
from gammadb.urls import libpq_uri, mask, parse_url, resolve_url, sqlite_path

if TYPE_CHECKING:
    from gammadb.store_import import ImportResult
    from gammadb.writer import MetricWriter

SQLITE_BUSY_TIMEOUT_MS = 60_000
TAIL_FRACTION = 0.1  # run summaries' tail mean: the last 10% of logged steps
_PG_LOCK_KEY = 0x67616D6D  # pg_advisory_lock key for schema changes ("gamm")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def migrations_dir() -> Path:
    import gammadb.migrations as migrations

    return Path(migrations.__file__).parent


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging defect, guarded by tests
        raise GammadbError(f"migrations have {len(heads)} heads; expected one")
    return heads[0]


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


class Store:
    """An open experiment store. ``Store.open(url)`` checks (or creates) the schema."""

    def __init__(self, url: URL, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._metric_ids: dict[MetricKey, int] = {}

    # ------------------------------------------------------------------ opening and schema
    @classmethod
    def open(cls, url: str | None = None, *, create: bool = True, check: bool = True) -> "Store":
        """Open the store at ``url`` (see :func:`gammadb.urls.resolve_url`).

        A store that does not exist yet is created at the newest revision (under a lock, so parallel
        workers never race); an existing store at an older revision is refused with the command that
        upgrades it, and so is one from a newer gammadb.
        """
        parsed = parse_url(resolve_url(url))
        store = cls(parsed, _make_engine(parsed))
        if check:
            store._check_schema(create=create)
        return store

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def current_revision(self) -> Optional[str]:
        from alembic.runtime.migration import MigrationContext

        with self._connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def revision_status(self) -> str:
        """One line for ``gammadb db current``: the store's revision, the head, and what to do."""
        current, head = self.current_revision(), head_revision()
        if current == head:
            state = "up to date"
        elif current is None:
            with self._connect() as conn:
                foreign = _foreign_tables(conn)
            state = f"not a gammadb store: it holds other tables ({_few(foreign)})" if foreign else "empty"
        elif current not in _known_revisions():
            state = f"newer than this gammadb {__version__} knows: upgrade gammadb (pip install -U gammadb)"
        else:
            state = "run `gammadb db upgrade`"
        return f"{current or 'none'} (head {head}: {state})"

    def _check_schema(self, *, create: bool) -> None:
        current = self.current_revision()
        head = head_revision()
        if current == head:
            return
        if current is None:
            with self._connect() as conn:
                self._refuse_foreign(conn)
        if current is None and create:
            # Decided again under the schema lock: another process may be creating it right now
            # (its tables can be visible before its revision is).
            self.upgrade(only_if_empty=True)
            return
        if current is not None and current not in _known_revisions():
            raise self._too_new(current)
        raise SchemaOutOfDateError(
            f"store {self.display_url} is at revision {current or 'none'}, gammadb needs {head}: "
            f"run `gammadb db upgrade --url {self.display_url}`"
        )

    def _too_new(self, current: str) -> SchemaTooNewError:
        return SchemaTooNewError(
            f"store {self.display_url} is at revision {current}, newer than this gammadb {__version__} "
            f"knows (its newest is {head_revision()}): upgrade gammadb (pip install -U gammadb)"
        )

    def _refuse_foreign(self, conn: Any) -> None:
        """Refuse a database without a gammadb schema that holds another program's tables: gammadb
        never adds its tables beside them unasked (``gammadb db upgrade --force`` does)."""
        foreign = _foreign_tables(conn)
        if foreign:
            raise StoreUnavailableError(
                f"store {self.display_url} holds tables that are not gammadb's ({_few(foreign)}) and no "
                "gammadb schema: point --url at a gammadb store or a new file or database, or add "
                f"gammadb's tables beside them with `gammadb db upgrade --force --url {self.display_url}`"
            )

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[Any]:
        """Serialise schema changes: a file lock beside SQLite, pg_advisory_lock on PostgreSQL."""
        if self.backend == "sqlite":
            from filelock import FileLock

            lock = str(sqlite_path(self.url)) + ".lock"
            try:  # an unwritable directory: FileLock would raise a PermissionError or retry for 600 s
                os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o666))
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot create or change store {self.display_url}: cannot write its lock file {lock} "
                    f"({exc.strerror}); the store's directory must be writable"
                ) from None
            with FileLock(lock, timeout=600):
                with self._connect() as conn:
                    yield conn
        else:
            with self._connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    conn.commit()

    def upgrade(self, revision: str = "head", *, only_if_empty: bool = False,
                force: bool = False) -> tuple[Optional[str], str]:
        """Upgrade the schema to ``revision`` under the schema lock. Returns (before, after).

        Refuses a store from a newer gammadb (SchemaTooNewError), an unknown revision
        (InvalidSpecError) and, unless ``force``, a database that holds another program's tables and
        no gammadb schema (StoreUnavailableError).
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with self._schema_lock() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            if before is None and not force:
                self._refuse_foreign(conn)
            if only_if_empty and (before is not None or _has_tables(conn)):
                conn.rollback()  # another process created it meanwhile, or it is not empty
                self._check_schema(create=False)
                return before, before or "none"
            if before is not None and before not in _known_revisions():
                raise self._too_new(before)
            # The lock connection itself runs the migrations (on SQLite a second connection would
            # wait on the first). Its autobegun transaction is committed by alembic's context.
            cfg = _alembic_config(conn)
            with self._revision_errors("upgrade", revision):
                command.upgrade(cfg, revision)
            conn.commit()
            after = MigrationContext.configure(conn).get_current_revision()
        return before, after or "base"

    def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` under the schema lock; refuses a store from a newer
        gammadb, an unknown revision and a database without a gammadb schema."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with self._schema_lock() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None:
                self._refuse_foreign(conn)
            elif current not in _known_revisions():
                raise self._too_new(current)
            with self._revision_errors("downgrade", revision):
                command.downgrade(_alembic_config(conn), revision)
            conn.commit()

    @contextlib.contextmanager
    def _revision_errors(self, verb: str, revision: str) -> Iterator[None]:
        """Alembic's CommandError (an unknown or unreachable revision) as one InvalidSpecError line."""
        from alembic.util import CommandError

        try:
            yield
        except CommandError as exc:
            known = ", ".join(["base", *sorted(_known_revisions()), "head"])
            raise InvalidSpecError(
                f"cannot {verb} {self.display_url} to {revision!r}: {_one_line(exc)} (revisions: {known})"
            ) from None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            # OperationalError (cannot open, locked, read-only) or the bare DatabaseError SQLite
            # raises for a file that is not a database or is damaged
            if isinstance(exc, OperationalError) or type(exc) is DatabaseError:
                raise _unavailable(self, exc) from None
            raise

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, driver errors -> GammadbError."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except GammadbError:
            session.rollback()
            raise
        except IntegrityError as exc:
            session.rollback()
            raise GammadbError(f"store constraint violated: {_one_line(exc)}") from None
        except OperationalError as exc:
            session.rollback()
            raise _unavailable(self, exc) from None
        except SQLAlchemyError as exc:
            session.rollback()
            raise GammadbError(f"store error: {_one_line(exc)}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # ------------------------------------------------------------------ sweeps
    def ensure_sweep(self, name: str, spec: Mapping[str, Any], code_version: str = __version__) -> SweepRecord:
        """The sweep called ``name``, created with ``spec`` if it does not exist yet."""
        if not name or len(name) > 200:
            raise InvalidSpecError("a sweep name must have 1 to 200 characters")
        for attempt in range(2):
            try:
                with self.session_scope() as s:
                    row = s.scalar(select(Sweep).where(Sweep.name == name))
                    if row is None:
                        row = Sweep(name=name, spec=dict(spec), code_version=code_version)
                        s.add(row)
                        s.flush()
                    return _sweep_record(row)
            except GammadbError:
                if attempt:  # lost a creation race to another worker: read the winner's row
                    raise
        raise AssertionError("unreachable")

    def get_sweep(self, name: str) -> SweepRecord:
        with self.session_scope() as s:
            row = s.scalar(select(Sweep).where(Sweep.name == name))
            if row is None:
                known = s.scalars(select(Sweep.name).order_by(Sweep.id).limit(10)).all()
                hint = f" (sweeps: {', '.join(known)})" if known else " (the store has no sweeps yet)"
                raise NotFoundError(f"no sweep named {name!r}{hint}")
            return _sweep_record(row)

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

    # ------------------------------------------------------------------ runs
    def ensure_runs(self, sweep_id: int, specs: Sequence[RunSpec]) -> list[RunRecord]:
        """Create the runs that do not exist yet (by point key); return all, in ``specs`` order."""
        keys = [spec.point_key() for spec in specs]
        with self.session_scope() as s:
            sweep_name = s.scalar(select(Sweep.name).where(Sweep.id == sweep_id))
            if sweep_name is None:
                raise NotFoundError(f"no sweep with id {sweep_id}")
            existing: dict[str, Run] = {}
            for chunk in _chunks(keys, 500):
                rows = s.scalars(select(Run).where(Run.sweep_id == sweep_id, Run.point_key.in_(chunk)))
                existing.update({r.point_key: r for r in rows})
            for key, spec in zip(keys, specs):
                if key not in existing:
                    row = Run(
                        sweep_id=sweep_id, point_key=key, model=spec.model, dataset=spec.dataset,
                        loss_fn=spec.loss_fn, optimizer=spec.optimizer, depth=spec.depth,
                        width=spec.width, batch_size=spec.batch_size, gamma=spec.gamma, eta=spec.eta,
                        seed=spec.seed, dtype=spec.dtype, device=spec.device, config=spec.config,
                        status=RunStatus.PENDING, steps_planned=spec.steps_planned, steps_done=0,
                    )
                    s.add(row)
                    existing[key] = row
            s.flush()
            return [_run_record(existing[k], sweep_name) for k in keys]

    def get_run(self, run_id: int) -> RunRecord:
        with self.session_scope() as s:
            row = s.get(Run, run_id)
            if row is None:
                raise NotFoundError(f"no run with id {run_id} (list them with `gammadb runs ls`)")
            return _run_record(row, s.scalar(select(Sweep.name).where(Sweep.id == row.sweep_id)))

    def runs(self, sweep: str | None = None, status: RunStatus | None = None) -> list[RunRecord]:
        with self.session_scope() as s:
            q = select(Run, Sweep.name).join(Sweep, Sweep.id == Run.sweep_id).order_by(Run.id)
            if sweep is not None:
                q = q.where(Sweep.name == sweep)
            if status is not None:
                q = q.where(Run.status == status)
            return [_run_record(r, name) for r, name in s.execute(q)]

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

    def mark_running(self, run_id: int, *, worker: str | None = None, device: str | None = None) -> None:
        values: dict[str, Any] = dict(
            status=RunStatus.RUNNING, worker=worker or worker_id(), heartbeat_at=utcnow(),
            started_at=utcnow(), error=None, finished_at=None,
        )
        if device is not None:
            values["device"] = device
        with self.session_scope() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def claim_next(self, sweep_id: int, *, worker: str | None = None,
                   run_ids: Sequence[int] | None = None) -> Optional[RunRecord]:
        """Atomically take one pending run of the sweep (optionally among ``run_ids``) for ``worker``.

        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: the session's ``BEGIN IMMEDIATE``
        makes the select-and-update one writer at a time. No run is ever claimed twice.
        """
        with self.session_scope() as s:
            q = select(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.PENDING)
            if run_ids is not None:
                q = q.where(Run.id.in_(list(run_ids)))
            q = q.order_by(Run.id).limit(1).with_for_update(skip_locked=True)
            row = s.scalar(q)
            if row is None:
                return None
            now = utcnow()
            row.status, row.worker, row.heartbeat_at, row.started_at = RunStatus.RUNNING, worker or worker_id(), now, now
            row.error, row.finished_at = None, None
            s.flush()
            return _run_record(row, s.scalar(select(Sweep.name).where(Sweep.id == sweep_id)))

    def claim_many(self, sweep_id: int, run_ids: Sequence[int], *, limit: int,
                   worker: str | None = None) -> list[RunRecord]:
        """Claim up to ``limit`` pending runs among ``run_ids`` in one transaction (an ensemble)."""
        if not run_ids or limit < 1:
            return []
        with self.session_scope() as s:
            q = (select(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.PENDING,
                                   Run.id.in_(list(run_ids)))
                 .order_by(Run.id).limit(limit).with_for_update(skip_locked=True))
            rows = list(s.scalars(q))
            now, who = utcnow(), worker or worker_id()
            for row in rows:
                row.status, row.worker, row.heartbeat_at, row.started_at = RunStatus.RUNNING, who, now, now
                row.error, row.finished_at = None, None
            s.flush()
            name = s.scalar(select(Sweep.name).where(Sweep.id == sweep_id))
            return [_run_record(r, name) for r in rows]

    def heartbeat(self, run_id: int, steps_done: int | None = None) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if steps_done is not None:
            values["steps_done"] = steps_done
        with self.session_scope() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def finish_run(self, run_id: int, status: RunStatus, *, steps_done: int,
                   diverged_at: int | None = None, error: str | None = None,
                   summarize: bool = True) -> None:
        """Record a run's end and (for a finished run) its summary, in one transaction: a run is never
        'completed' without its summary, whatever interrupts this call."""
        rows = []
        if status.finished and summarize:
            rows = summarize_losses(self.series([run_id], metrics=[LOSS]), [run_id])
        now = utcnow()
        with self.session_scope() as s:
            s.execute(
                update(Run).where(Run.id == run_id).values(
                    status=status, steps_done=steps_done, diverged_at=diverged_at,
                    error=mask(error)[:4000] if error else None, finished_at=now, heartbeat_at=now,
                )
            )
            _replace_summaries(s, rows, now)

    def finish_runs(self, ends: Sequence[tuple[int, RunStatus, int, Optional[int]]]) -> None:
        """Record many runs' ends, (run_id, status, steps_done, diverged_at), in one transaction
        (imports); summaries are rebuilt separately with :meth:`rebuild_summaries`."""
        if not ends:
            return
        now = utcnow()
        with self.session_scope() as s:
            s.execute(update(Run), [
                {"id": rid, "status": st, "steps_done": done, "diverged_at": div, "error": None,
                 "finished_at": now, "heartbeat_at": now}
                for rid, st, done, div in ends
            ])

    def reset_runs(self, run_ids: Sequence[int]) -> int:
        """Put running runs back to pending (their committed steps stay and are overwritten on
        rerun); runs that already ended are left alone."""
        if not run_ids:
            return 0
        with self.session_scope() as s:
            res = s.execute(
                update(Run).where(Run.id.in_(list(run_ids)), Run.status == RunStatus.RUNNING).values(
                    status=RunStatus.PENDING, worker=None, error=None, finished_at=None
                )
            )
            return res.rowcount or 0

    def release_worker(self, worker: str | None = None) -> int:
        """Put every run that ``worker`` (default: this process) holds as running back to pending."""
        with self.session_scope() as s:
            res = s.execute(
                update(Run).where(Run.worker == (worker or worker_id()), Run.status == RunStatus.RUNNING)
                .values(status=RunStatus.PENDING, worker=None)
            )
            return res.rowcount or 0

    def requeue(self, sweep: str | None = None, *, stale_after_s: float | None = None,
                failed: bool = False) -> list[int]:
        """Put stale running runs (heartbeat older than ``stale_after_s``, or owned by a dead local
        process) and, with ``failed``, failed runs back to pending. Diverged runs are results and
        are never requeued. Returns the requeued run ids."""
        now = utcnow()
        ids: list[int] = []
        host = socket.gethostname()
        with self.session_scope() as s:
            q = select(Run.id, Run.status, Run.worker, Run.heartbeat_at).join(Sweep, Sweep.id == Run.sweep_id)
            if sweep is not None:
                q = q.where(Sweep.name == sweep)
            q = q.where(Run.status.in_([RunStatus.RUNNING, RunStatus.FAILED]))
            for run_id, status, worker, beat in s.execute(q):
                if status == RunStatus.FAILED:
                    if failed:
                        ids.append(run_id)
                    continue
                if _dead_local_worker(worker, host):
                    ids.append(run_id)
                elif stale_after_s is not None and beat is not None:
                    if beat.tzinfo is None:
                        beat = beat.replace(tzinfo=dt.timezone.utc)
                    if (now - beat).total_seconds() > stale_after_s:
                        ids.append(run_id)
            if ids:
                s.execute(update(Run).where(Run.id.in_(ids)).values(status=RunStatus.PENDING, worker=None))
        return ids

    def delete_steps_after(self, run_id: int, step: int) -> None:
        """Drop a run's values after ``step`` (a restarted run rewrites them)."""
        with self.session_scope() as s:
            s.execute(delete(MetricValue).where(MetricValue.run_id == run_id, MetricValue.step > step))

    # ------------------------------------------------------------------ metrics
    def metric_ids(self, keys: Iterable[MetricKey]) -> dict[MetricKey, int]:
        """Ids of the (name, layer) series, created on first use. Cached per store."""
        wanted = [MetricKey(*k) for k in keys]
        missing = [k for k in dict.fromkeys(wanted) if k not in self._metric_ids]
        if missing:
            for attempt in range(3):
                try:
                    with self.session_scope() as s:
                        rows = s.execute(select(Metric.name, Metric.layer, Metric.id)).all()
                        known = {MetricKey(n, l): i for n, l, i in rows}
                        for k in missing:
                            if k not in known:
                                m = Metric(name=k.name, layer=k.layer, kind=kind_of(k.name).value)
                                s.add(m)
                                s.flush()
                                known[k] = m.id
                    self._metric_ids.update(known)
                    break
                except GammadbError:
                    if attempt == 2:
                        raise
        return {k: self._metric_ids[k] for k in wanted}

    def writer(self, **kwargs: Any) -> "MetricWriter":
        """A batched background writer of per-step values (see :class:`gammadb.writer.MetricWriter`)."""
        from gammadb.writer import MetricWriter

        return MetricWriter(self, **kwargs)

    def import_runs(self, sweep: str, sweep_spec: Mapping[str, Any], specs: Sequence[RunSpec],
                    keys: Sequence[MetricKey], values: pl.DataFrame, *, replace: bool = False) -> "ImportResult":
        """One import (sweep, runs by point key, values, statuses, summaries) in one transaction; see
        :func:`gammadb.store_import.import_runs`."""
        from gammadb.store_import import import_runs

        return import_runs(self, sweep, sweep_spec, specs, keys, values, replace=replace)

    def series(self, run_ids: Sequence[int] | None = None, *, sweep: str | None = None,
               metrics: Sequence[str] = (LOSS,), max_step: int | None = None) -> pl.DataFrame:
        """Per-step values, long format: run_id, metric, layer, step, value (NaN decoded)."""
        where, params = [], []
        if sweep is not None:
            self.get_sweep(sweep)
            where.append("v.run_id IN (SELECT r.id FROM runs r JOIN sweeps s ON s.id = r.sweep_id WHERE s.name = ?)")
            params.append(sweep)
        if run_ids is not None:
            if not run_ids:
                return _empty_series()
            where.append(f"v.run_id IN ({', '.join('?' * len(run_ids))})")
            params.extend(int(r) for r in run_ids)
        if metrics:
            where.append(f"m.name IN ({', '.join('?' * len(metrics))})")
            params.extend(metrics)
        if max_step is not None:
            where.append("v.step <= ?")
            params.append(int(max_step))
        sql = (
            "SELECT v.run_id, m.name AS metric, m.layer, v.step, v.value FROM metric_values v "
            "JOIN metrics m ON m.id = v.metric_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        df = self.read(sql + " ORDER BY v.run_id, m.name, m.layer, v.step", params)
        if df.is_empty():
            return _empty_series()
        return df.with_columns(
            pl.col("run_id").cast(pl.Int64), pl.col("layer").cast(pl.Int64), pl.col("step").cast(pl.Int64),
            pl.col("value").cast(pl.Float64).fill_null(math.nan),
        )

    # ------------------------------------------------------------------ summaries
    def rebuild_summaries(self, sweep: str | None = None, run_ids: Sequence[int] | None = None) -> int:
        """Recompute run summaries from the stored loss series. Returns the number of runs."""
        if run_ids is None:
            run_ids = [r.id for r in self.runs(sweep=sweep)]
        if not run_ids:
            return 0
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(list(run_ids), 400):
            loss = self.series(chunk, metrics=[LOSS])
            rows.extend(summarize_losses(loss, chunk))
        with self.session_scope() as s:
            _replace_summaries(s, rows, utcnow())
        return len(rows)

    def summaries(self, run_ids: Sequence[int]) -> dict[int, SummaryRecord]:
        with self.session_scope() as s:
            out: dict[int, SummaryRecord] = {}
            for chunk in _chunks(list(run_ids), 500):
                for r in s.scalars(select(RunSummary).where(RunSummary.run_id.in_(chunk))):
                    out[r.run_id] = SummaryRecord(
                        r.run_id, r.initial_loss, r.final_loss, r.final_step, r.min_loss,
                        r.min_loss_step, r.tail_mean_loss, r.diverged, r.steps_logged,
                    )
            return out

    # ------------------------------------------------------------------ reads
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

    def raw_connection(self, *, read_only: bool = False) -> Any:
        """A DB-API connection of the driver itself (sqlite3 / psycopg), for bulk paths."""
        return _raw_connection(self.url, read_only=read_only)

    # ------------------------------------------------------------------ deletion
    def delete_sweep(self, name: str) -> int:
        sweep = self.get_sweep(name)
        with self.session_scope() as s:
            ids = s.scalars(select(Run.id).where(Run.sweep_id == sweep.id)).all()
            for chunk in _chunks(list(ids), 500):
                s.execute(delete(MetricValue).where(MetricValue.run_id.in_(chunk)))
                s.execute(delete(RunSummary).where(RunSummary.run_id.in_(chunk)))
            s.execute(delete(Run).where(Run.sweep_id == sweep.id))
            s.execute(delete(Sweep).where(Sweep.id == sweep.id))
            return len(ids)


# ---------------------------------------------------------------------- helpers
def summarize_losses(loss: pl.DataFrame, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per-run summary rows from a long loss frame (run_id, step, value)."""
    by_run = {int(k[0]): g.sort("step") for k, g in loss.group_by("run_id")} if not loss.is_empty() else {}
    rows = []
    for run_id in run_ids:
        g = by_run.get(int(run_id))
        if g is None or g.is_empty():
            rows.append(dict(run_id=run_id, initial_loss=None, final_loss=None, final_step=None,
                             min_loss=None, min_loss_step=None, tail_mean_loss=None, diverged=False,
                             steps_logged=0))
            continue
        steps = g["step"].to_list()
        values = g["value"].to_list()
        finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        diverged = len(finite) < len(values)
        n_tail = max(1, math.ceil(TAIL_FRACTION * len(values)))
        tail = values[-n_tail:]
        min_step, min_val = min(finite, key=lambda sv: sv[1]) if finite else (None, None)
        rows.append(dict(
            run_id=run_id, initial_loss=_finite_or_none(values[0]), final_loss=_finite_or_none(values[-1]),
            final_step=steps[-1], min_loss=min_val, min_loss_step=min_step,
            tail_mean_loss=(sum(tail) / len(tail)) if all(math.isfinite(v) for v in tail) else None,
            diverged=diverged, steps_logged=len(values),
        ))
    return rows


def _has_tables(conn: Any) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).get_table_names())


def _foreign_tables(conn: Any) -> list[str]:
    """The tables in the database that are neither gammadb's nor alembic's, sorted."""
    from sqlalchemy import inspect

    ours = set(Run.metadata.tables) | {"alembic_version"}
    return sorted(set(inspect(conn).get_table_names()) - ours)


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _replace_summaries(session: Session, rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """Inside the caller's transaction: the summaries of ``rows``' runs become ``rows``."""
    if not rows:
        return
    for chunk in _chunks([r["run_id"] for r in rows], 500):
        session.execute(delete(RunSummary).where(RunSummary.run_id.in_(chunk)))
    session.execute(RunSummary.__table__.insert(), [{**r, "updated_at": now} for r in rows])


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        _check_sqlite_file(path, url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            try:
                # WAL persists in the file: set it on gammadb's stores (and new ones) only, never
                # on another program's database, which gammadb refuses and must leave as it was
                tables = {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables or "alembic_version" in tables:
                    cur.execute("PRAGMA journal_mode = WAL")
            except Exception:
                pass  # a read-only or damaged file: the first query fails with a clear error
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover
            # IMMEDIATE takes the write lock up front: two workers never deadlock upgrading a read
            # lock, and a claim's select-then-update is atomic. busy_timeout makes others wait.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreUnavailableError("PostgreSQL needs psycopg: pip install 'gammadb[postgres]'") from None
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path, url: URL) -> None:
    """Refuse, before SQLite sees it, a store path whose directory is missing or is a file, a path
    that is a directory, and a file that is not an SQLite database (SQLite's own errors for these
    surface later, as tracebacks, or not at all)."""
    parent = path.parent
    if not parent.is_dir():
        blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
        what = f"cannot be created: {blocker} is a file" if blocker and not blocker.is_dir() else "does not exist"
        raise StoreUnavailableError(f"cannot open store {url}: directory {parent} {what}")
    if path.is_dir():
        raise StoreUnavailableError(f"cannot open store {url}: {path} is a directory, not a database file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError:
        return  # missing (a new store) or unreadable: SQLite says which, as StoreUnavailableError
    if head and head != _SQLITE_MAGIC:
        raise StoreUnavailableError(
            f"cannot open store {url}: {path} is not an SQLite database (point --url at a gammadb "
            "store or a new file)"
        )


def _raw_connection(url: URL, *, read_only: bool = False) -> Any:
    try:
        if url.get_backend_name() == "sqlite":
            import sqlite3

            path = sqlite_path(url)
            if read_only:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
            else:
                conn = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            return conn
        import psycopg

        # Read-only twice over: the session's default (so a COMMIT inside a statement only starts
        # another read-only transaction) and psycopg's own BEGIN, which says READ ONLY. The keyword
        # argument overrides any options= in the URL.
        options = "-c default_transaction_read_only=on" if read_only else None
        conn = psycopg.connect(libpq_uri(url), connect_timeout=10, options=options)
        conn.read_only = read_only or None
        return conn
    except GammadbError:
        raise
    except Exception as exc:
        raise StoreUnavailableError(f"cannot open {url.render_as_string(hide_password=True)}: {_one_line(exc)}") from None


def _unavailable(store: Store, exc: Exception) -> GammadbError:
    msg = _one_line(exc)
    if store.backend == "sqlite" and ("not a database" in msg or "malformed" in msg):
        return StoreUnavailableError(f"store {store.display_url} is not a readable SQLite database: {msg}")
    if "readonly" in msg or "read-only" in msg:
        return StoreUnavailableError(f"store {store.display_url} is read-only: {msg}")
    if "unable to open database file" in msg:
        return StoreUnavailableError(
            f"cannot open store {store.display_url}: {msg} (can this user read and write the file and "
            "its directory?)"
        )
    if "disk" in msg and "full" in msg:
        return StoreUnavailableError(f"disk full writing {store.display_url}: free space and rerun")
    return StoreUnavailableError(f"cannot use store {store.display_url}: {msg}")


def _one_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text_ = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return mask(text_)


def _dollar_params(sql: str) -> str:
    out, n = [], 0
    for ch in sql:
        if ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _dead_local_worker(worker: str | None, host: str) -> bool:
    if not worker or ":" not in worker:
        return False
    w_host, _, pid = worker.rpartition(":")
    if w_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _empty_series() -> pl.DataFrame:
    return pl.DataFrame(schema={"run_id": pl.Int64, "metric": pl.String, "layer": pl.Int64,
                                "step": pl.Int64, "value": pl.Float64})


def _sweep_record(row: Sweep) -> SweepRecord:
    return SweepRecord(row.id, row.name, dict(row.spec), row.code_version, row.created_at)


def _run_record(row: Run, sweep_name: str) -> RunRecord:
    return RunRecord(
        id=row.id, sweep_id=row.sweep_id, sweep=sweep_name, model=row.model, dataset=row.dataset,
        loss_fn=row.loss_fn, optimizer=row.optimizer, depth=row.depth, width=row.width,
        batch_size=row.batch_size, gamma=row.gamma, eta=row.eta, seed=row.seed, dtype=row.dtype,
        device=row.device, config=dict(row.config), status=RunStatus(row.status),
        steps_planned=row.steps_planned, steps_done=row.steps_done, diverged_at=row.diverged_at,
        error=row.error, worker=row.worker, heartbeat_at=row.heartbeat_at, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at,
    )
