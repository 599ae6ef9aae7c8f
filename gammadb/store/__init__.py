"""The store: the only package that opens a Session or a database connection; :class:`Store` is its facade.

Every public method is one transaction (``session_scope``); driver errors become gammadb errors. Bulk
per-step writes go through :mod:`gammadb.store.writer` (driver executemany / COPY); bulk reads go
through ADBC straight into polars. The ORM handles the small tables. Rooms:

- ``engine``: URL -> engine, the drivers' own connections, SQLite file checks, error translation.
- ``versioning``: Alembic revisions, the schema check on open, the schema lock, upgrade / downgrade.
- ``sweeps``: sweeps and runs as records (create, look up, delete).
- ``queue``: the run queue (claims, heartbeats, run ends, requeue).
- ``reads``: named reads as polars frames, summaries lookup, metric series ids.
- ``analysis_reads``: the reads of the analyses (metric catalogue, loss ends and aggregates at a
  budget, log-bucketed series, run selection); no SQL lives in :mod:`gammadb.analysis`.
- ``bucket_cache``: the cache of bucketed series, checked against the versions triggers keep.
- ``summaries``: summary maths and rebuilds.
- ``writer``: the batched background writer of per-step values.
- ``imports``: the all-or-nothing import of runs and values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from gammadb.errors import GammadbError, NotFoundError
from gammadb.metrics import MetricKey
from gammadb.records import RunSpec
from gammadb.store.analysis_reads import AnalysisReadsMixin
from gammadb.store.bucket_cache import BucketCacheMixin
from gammadb.store.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    _make_engine,
    _one_line,
    _raw_connection,
    _unavailable,
    retry_transient,
    utcnow,
    worker_id,
)
from gammadb.store.queue import QueueMixin
from gammadb.store.reads import ReadsMixin
from gammadb.store.summaries import TAIL_FRACTION, SummariesMixin, summarize_losses
from gammadb.store.sweeps import SweepsMixin
from gammadb.store.versioning import VersioningMixin, head_revision, migrations_dir
from gammadb.urls import parse_url, resolve_url, sqlite_path

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from gammadb.store.imports import ImportResult
    from gammadb.store.writer import MetricWriter

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS", "TAIL_FRACTION", "Store", "head_revision", "migrations_dir", "retry_transient",
    "summarize_losses", "utcnow", "worker_id",
]


def _missing_file(url: URL) -> bool:
    """An SQLite store file that does not exist in a folder that does (a missing folder has its own
    error, from the engine)."""
    path = sqlite_path(url)
    return path.parent.is_dir() and not path.exists()


def _abandon(session: Session, exc: BaseException, backend: str) -> None:
    """Undo the session's transaction after an interrupt (Ctrl-C, SIGTERM) or an unexpected error.

    On PostgreSQL an interrupt can leave the connection mid-command (inside a ``COPY``), where a
    ROLLBACK cannot even be sent ("another command is already in progress"): the connection is
    dropped instead, unused, the server discards its transaction when it closes, nothing is logged
    and the interrupt goes on as itself. SQLite's calls are never cut in half by a signal (Python runs
    the handler between them), so its connection rolls back as after any error. Should a rollback
    fail, the connection is dropped the same way and the original error wins."""
    if backend == "postgresql" and not isinstance(exc, Exception):
        session.invalidate()
        return
    try:
        session.rollback()
    except Exception:  # noqa: BLE001 - whatever the broken connection says, the original error wins
        session.invalidate()


class Store(VersioningMixin, SweepsMixin, QueueMixin, ReadsMixin, AnalysisReadsMixin, BucketCacheMixin,
            SummariesMixin):
    """An open experiment store. ``Store.open(url)`` checks (or creates) the schema."""

    def __init__(self, url: URL, engine: Engine, *, read_only: bool = False) -> None:
        self.url = url
        self.engine = engine
        self.read_only = read_only
        self._sessions: "sessionmaker[Session] | None" = None  # made on first use: see session_scope
        self._metric_ids: dict[MetricKey, int] = {}

    @classmethod
    def open(cls, url: str | None = None, *, create: bool = True, check: bool = True,
             read_only: bool = False) -> "Store":
        """Open the store at ``url`` (see :func:`gammadb.urls.resolve_url`).

        A store that does not exist yet is created at the newest revision (under a lock, so parallel
        workers never race); an existing store at an older revision is refused with the command that
        upgrades it, and so is one from a newer gammadb. ``read_only``: the database itself refuses
        writes, nothing is created, and on SQLite reads take no write lock (dashboards, readers).
        """
        parsed = parse_url(resolve_url(url))
        if not (create and not read_only) and parsed.get_backend_name() == "sqlite" and _missing_file(parsed):
            # without this SQLite would leave an empty file behind (in whatever folder this ran in)
            shown = parsed.render_as_string(hide_password=True)
            raise NotFoundError(
                f"no gammadb store at {sqlite_path(parsed).resolve()} ({shown}): create it with "
                f"`gammadb run` or `gammadb db upgrade --url {shown}`, or point --url (or $GAMMADB_URL) "
                "at an existing store"
            )
        store = cls(parsed, _make_engine(parsed, read_only=read_only), read_only=read_only)
        if check:
            store._check_schema(create=create and not read_only)
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

    # ------------------------------------------------------------------ connections and transactions
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

    @contextlib.contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, driver errors -> GammadbError.

        The ORM is imported here, on the first session: the reads of a read-only command (a report,
        a chart, an analysis) go through Core and the drivers, and never pay its import (0.1-0.15 s)."""
        if self._sessions is None:
            from sqlalchemy.orm import sessionmaker

            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
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
        except BaseException as exc:
            _abandon(session, exc, self.backend)
            raise
        finally:
            session.close()

    def raw_connection(self, *, read_only: bool = False) -> Any:
        """A DB-API connection of the driver itself (sqlite3 / psycopg), for bulk paths."""
        return _raw_connection(self.url, read_only=read_only)

    # ------------------------------------------------------------------ bulk writes
    def writer(self, **kwargs: Any) -> "MetricWriter":
        """A batched background writer of per-step values (see :class:`gammadb.store.writer.MetricWriter`)."""
        from gammadb.store.writer import MetricWriter

        return MetricWriter(self, **kwargs)

    def import_runs(self, sweep: str, sweep_spec: Mapping[str, Any], specs: Sequence[RunSpec],
                    keys: Sequence[MetricKey], values: pl.DataFrame, *, replace: bool = False) -> "ImportResult":
        """One import (sweep, runs by point key, values, statuses, summaries) in one transaction; see
        :func:`gammadb.store.imports.import_runs`."""
        from gammadb.store.imports import import_runs

        return import_runs(self, sweep, sweep_spec, specs, keys, values, replace=replace)
