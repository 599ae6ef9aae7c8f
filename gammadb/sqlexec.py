"""Ad-hoc SQL against a store, read-only unless asked.

Read-only is enforced by the database connection, not by parsing the text:
- SQLite: the file is opened ``mode=ro`` with ``PRAGMA query_only``, and an authorizer denies
  ATTACH/DETACH (which VACUUM and VACUUM INTO use too) and any PRAGMA that sets a value; ``sqlite3``
  refuses multi-statement strings.
- PostgreSQL: the statement is sent as a server-side prepared statement, which the server parses as
  exactly one statement ("cannot insert multiple commands into a prepared statement"), inside a
  ``BEGIN READ ONLY`` transaction that is always rolled back, on a session whose default transaction
  is read-only. One statement cannot both leave the read-only transaction and write, and whatever it
  SETs is rolled back or dies with the connection. Statements that cannot run in a transaction
  block (VACUUM, CREATE DATABASE, ALTER SYSTEM) are refused by the server.

A read-only transaction still lets COPY ... TO a file or PROGRAM run on the server, as it only reads
the database. So, when the login role may touch server files (a superuser, or a member of
pg_write_server_files / pg_execute_server_program / pg_read_server_files), the statement runs under
``SET LOCAL ROLE pg_read_all_data``, which may read every table and nothing on the server's disk
(where that role is missing, before PostgreSQL 14, or the login role may not take it, the statement
runs with the login role's rights). A superuser can take its rights back inside one statement (DO
with RESET ROLE, or set_config('role', ...)), so COPY, DO and CALL are refused outright: the one text
check here, on the statement's first word.
The limit that remains: a superuser URL can still reach superuser-only functions from a SELECT by
first calling set_config('role', ...). People who should only read get their own role
(:func:`gammadb.roles.create_reader_role`); with it no statement can write.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from gammadb.errors import GammadbError, ReadOnlyViolationError, StoreUnavailableError
from gammadb.store import Store
from gammadb.urls import mask

# SQLite on Python 3.10 has no sqlite_errorname: fall back on the words of its messages.
_SQLITE_READ_ONLY_HINTS = ("readonly", "read-only", "query_only", "not authorized", "authorization denied")
# 25006 read_only_sql_transaction; 25001 active_sql_transaction (VACUUM and the like refuse to run
# inside our transaction block); 2D000 invalid_transaction_termination (COMMIT inside DO / CALL).
_PG_READ_ONLY_STATES = ("25006", "25001", "2D000")
_PG_SERVER_SIDE = ("COPY", "DO", "CALL")

_PG_PRIVILEGED = """
SELECT
  (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
  OR EXISTS (SELECT 1 FROM pg_roles
             WHERE rolname IN ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program')
               AND pg_has_role(current_user, oid, 'USAGE')),
  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data'
          AND pg_has_role(current_user, oid, 'MEMBER'))
"""


def run_sql(store: Store, sql: str, *, write: bool = False, max_rows: int | None = None) -> pl.DataFrame:
    """Execute one SQL statement; return its rows (an empty frame for statements without rows)."""
    if not sql.strip():
        raise GammadbError("empty SQL statement")
    postgres = store.backend == "postgresql"
    if postgres and not write:
        _refuse_server_side_code(sql)
    conn = store.raw_connection(read_only=not write)
    try:
        try:
            cur = conn.cursor()
            if not write and postgres:
                _drop_server_file_rights(cur)
                cur.execute(sql, prepare=True)  # extended protocol: the server takes one statement
            else:
                if not write:
                    conn.set_authorizer(_sqlite_read_only_authorizer)
                elif not postgres:
                    cur.execute("BEGIN IMMEDIATE")
                cur.execute(sql)
            if cur.description:
                rows = cur.fetchmany(max_rows) if max_rows else cur.fetchall()
            else:
                rows = []
            columns = [d[0] for d in cur.description] if cur.description else []
            affected = cur.rowcount
            if write:
                conn.commit() if postgres else cur.execute("COMMIT")
        except Exception as exc:
            _rollback(store, conn)
            raise _sql_error(exc, write=write) from None
    finally:
        _rollback(store, conn)  # read-only: never commit, whatever the statement did
        try:
            conn.close()
        except Exception:
            pass
    if not columns:
        return pl.DataFrame({"rows_affected": [max(affected, 0)]})
    return _frame(columns, rows)


def _refuse_server_side_code(sql: str) -> None:
    word = first_keyword(sql)
    if word in _PG_SERVER_SIDE:
        raise ReadOnlyViolationError(
            f"refused: read-only `gammadb sql` does not run {word} (it can reach files and programs on "
            "the database server); use a SELECT, or pass --write to run it as a trusted statement"
        )


def first_keyword(sql: str) -> str:
    """The statement's first word, upper-cased, after what PostgreSQL skips: whitespace, empty
    statements (;), -- comments and nested /* */ comments. '' when there is none."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif sql.startswith("--", i):
            while i < n and sql[i] not in "\r\n":
                i += 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    j = i
    while j < n and (sql[j].isalnum() or sql[j] in "_$"):
        j += 1
    return sql[i:j].upper()


def _drop_server_file_rights(cur: Any) -> None:
    # Inside the read-only transaction psycopg has begun; SET LOCAL ends with it.
    cur.execute(_PG_PRIVILEGED)
    privileged, can_drop = cur.fetchone()
    if privileged and can_drop:
        cur.execute("SET LOCAL ROLE pg_read_all_data")


def _sql_error(exc: Exception, *, write: bool) -> GammadbError:
    if isinstance(exc, GammadbError):
        return exc
    text = str(exc).strip()
    msg = mask(text.splitlines()[0] if text else type(exc).__name__)
    if not write and _is_read_only_refusal(exc, msg):
        return ReadOnlyViolationError(
            f"refused: the store is opened read-only ({msg}); pass --write to modify it"
        )
    if getattr(exc, "sqlstate", None) == "42601" and "multiple commands" in msg:
        return GammadbError(f"SQL error: give one statement per call ({msg})")
    return GammadbError(f"SQL error: {msg}")


def _is_read_only_refusal(exc: Exception, msg: str) -> bool:
    state = getattr(exc, "sqlstate", None)
    if state is not None:
        return state in _PG_READ_ONLY_STATES
    name = getattr(exc, "sqlite_errorname", None)
    if name is not None:
        return name.startswith("SQLITE_READONLY") or name == "SQLITE_AUTH"
    return any(h in msg.lower() for h in _SQLITE_READ_ONLY_HINTS)


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

