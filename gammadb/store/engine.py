"""The store's connections: URL -> SQLAlchemy engine, the drivers' own DB-API connections, and driver
errors translated into one-line gammadb errors; plus the small helpers every room of the store shares
(``utcnow``, ``worker_id``, ``_chunks``)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import QueuePool

from gammadb.errors import GammadbError, StoreUnavailableError
from gammadb.urls import libpq_uri, mask, sqlite_path

if TYPE_CHECKING:
    from gammadb.store import Store

T = TypeVar("T")
SQLITE_MMAP_BYTES = 1 << 30  # address space only: pages are mapped as they are read
SQLITE_BUSY_TIMEOUT_MS = 60_000


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def transient(exc: BaseException) -> bool:
    """Whether a store error is worth one more try on a new connection: a backend terminated or
    restarted, a dropped connection, a lock held a moment too long."""
    text = str(exc).lower()
    return any(w in text for w in ("terminat", "connection", "closed", "server", "locked", "busy"))


def retry_transient(fn: Callable[..., T], *args: Any, attempts: int = 3, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, tried again (after 0.5 s, then 1 s) when it fails with a transient
    StoreUnavailableError. Only for calls that are one transaction and safe to repeat (a run's end)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except StoreUnavailableError as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _make_engine(url: URL, *, read_only: bool = False) -> Engine:
    """The engine of a store. ``read_only``: the database refuses every write (SQLite: the file opened
    ``mode=ro`` with ``query_only``, plain deferred transactions that take no write lock, so readers
    never wait for a writer; PostgreSQL: ``default_transaction_read_only``)."""
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        _check_sqlite_file(path, url)
        if read_only:
            import sqlite3

            def _connect_ro() -> sqlite3.Connection:
                if not path.exists():
                    raise StoreUnavailableError(f"no store at {path}: nothing to open read-only")
                return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                       timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)

            # The pool a file URL gets: "sqlite://" alone means :memory: to SQLAlchemy, whose
            # SingletonThreadPool closes a connection another thread is using once more than five
            # threads read (the dashboard's request threads): errors, or a segfault in sqlite3.
            engine = create_engine("sqlite://", creator=_connect_ro, poolclass=QueuePool)

            @event.listens_for(engine, "connect")
            def _on_connect_ro(dbapi_conn, _record):  # pragma: no cover - exercised by the ro tests
                dbapi_conn.isolation_level = None
                dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                dbapi_conn.execute("PRAGMA query_only = ON")

            @event.listens_for(engine, "begin")
            def _on_begin_ro(conn):  # pragma: no cover
                conn.exec_driver_sql("BEGIN")

            return engine
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
    connect_args: dict[str, object] = {"connect_timeout": 10}
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


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
                # Reads of chunk blobs straight from the page cache's mapping: about 1.25x faster
                # reads of a whole sweep (benchmarks/bench_store_layout.py).
                conn.execute(f"PRAGMA mmap_size = {SQLITE_MMAP_BYTES}")
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
