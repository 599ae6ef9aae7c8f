"""Ad-hoc SQL against a store, read-only unless asked.

Read-only is enforced by the database connection, not by parsing the text:
- SQLite: the file is opened ``mode=ro`` with ``PRAGMA query_only``, and an authorizer denies
  ATTACH/DETACH and any PRAGMA that sets a value (``sqlite3`` also refuses multi-statement strings).
- PostgreSQL: the session's default transaction is READ ONLY (so even ``COMMIT; ...`` starts another
  read-only transaction), and psycopg's extended protocol runs one statement per call.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from gammadb.errors import GammadbError, ReadOnlyViolationError, StoreUnavailableError
from gammadb.store import Store
from gammadb.urls import mask

_READ_ONLY_HINTS = ("readonly", "read-only", "read only", "query_only", "not authorized", "prohibited")


def run_sql(store: Store, sql: str, *, write: bool = False, max_rows: int | None = None) -> pl.DataFrame:
    """Execute one SQL statement; return its rows (an empty frame for statements without rows)."""
    if not sql.strip():
        raise GammadbError("empty SQL statement")
    conn = store.raw_connection(read_only=not write)
    try:
        if store.backend == "sqlite" and not write:
            conn.set_authorizer(_sqlite_read_only_authorizer)
        try:
            cur = conn.cursor()
            if store.backend == "sqlite" and write:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(sql)
            rows = cur.fetchmany(max_rows) if max_rows else (cur.fetchall() if cur.description else [])
            columns = [d[0] for d in cur.description] if cur.description else []
            affected = cur.rowcount
            if write:
                conn.commit() if store.backend == "postgresql" else cur.execute("COMMIT")
        except Exception as exc:
            _rollback(store, conn)
            msg = mask(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            if not write and any(h in msg.lower() for h in _READ_ONLY_HINTS):
                raise ReadOnlyViolationError(
                    f"refused: the store is opened read-only ({msg}); pass --write to modify it"
                ) from None
            if isinstance(exc, GammadbError):
                raise
            raise GammadbError(f"SQL error: {msg}") from None
    finally:
        try:
            conn.close()
        except Exception:
            pass
    if not columns:
        return pl.DataFrame({"rows_affected": [max(affected, 0)]})
    return _frame(columns, rows)


def _frame(columns: list[str], rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    # Column names can repeat in SQL (SELECT a.id, b.id): make them unique for the frame.
    seen: dict[str, int] = {}
    names = []
    for c in columns:
        n = seen.get(c, 0)
        seen[c] = n + 1
        names.append(c if n == 0 else f"{c}_{n}")
    data = {name: [r[i] for r in rows] for i, name in enumerate(names)}
    try:
        return pl.DataFrame(data, strict=False)
    except Exception:
        return pl.DataFrame({k: [None if v is None else str(v) for v in vs] for k, vs in data.items()})


def _rollback(store: Store, conn: Any) -> None:
    try:
        if store.backend == "postgresql":
            conn.rollback()
        elif conn.in_transaction:
            conn.execute("ROLLBACK")
    except Exception:
        pass


def _sqlite_read_only_authorizer(action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
    import sqlite3

    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None:
        # A PRAGMA with a value sets something; read-only PRAGMAs (table_info(x)) pass arg2 too,
        # so allow those that only take a table name.
        if str(arg1).lower() not in ("table_info", "table_xinfo", "index_list", "index_info",
                                     "foreign_key_list", "index_xinfo"):
            return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def check_connect(store: Store) -> None:
    """Raise StoreUnavailableError unless the store answers a trivial query."""
    try:
        run_sql(store, "SELECT 1")
    except GammadbError as exc:
        raise StoreUnavailableError(str(exc)) from None
