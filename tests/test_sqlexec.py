"""`gammadb sql` is read-only unless --write, enforced by the connection on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.errors import GammadbError, InvalidSpecError, ReadOnlyViolationError
from gammadb.metrics import LOSS, MetricKey
from gammadb.roles import create_reader_role
from gammadb.sqlexec import first_keyword, run_sql
from gammadb.store import Store
from gammadb.urls import libpq_uri
from tests.store.test_store import spec

runner = CliRunner()

ATTACKS = {
    "drop": "DROP TABLE runs",
    "delete": "DELETE FROM runs",
    "update": "UPDATE runs SET gamma = 0",
    "insert": "INSERT INTO sweeps (name, spec, code_version) VALUES ('x', '{}', 'x')",
    "attach": "ATTACH DATABASE 'evil.sqlite' AS evil",
    "pragma": "PRAGMA writable_schema = 1",
    "cte": "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone",
    "multi": "COMMIT; DROP TABLE runs",
}


def _fill(store: Store) -> Store:
    sweep = store.ensure_sweep("s", {})
    runs = store.ensure_runs(sweep.id, [spec(0.1), spec(1.0)])
    with store.writer() as w:
        for step in (1, 2, 3):
            w.log(runs[0].id, step, {MetricKey(LOSS): 1.0 / step})
    return store


@pytest.fixture
def filled(store: Store) -> Store:
    return _fill(store)


def _state(store: Store) -> dict[str, object]:
    """What an attack could destroy: row counts and the tables and views that exist."""
    insp = inspect(store.engine)
    counts = {t: run_sql(store, f"SELECT COUNT(*) AS n FROM {t}")["n"].item()
              for t in ("sweeps", "runs", "metric_values")}
    return {**counts, "tables": sorted(insp.get_table_names()), "views": sorted(insp.get_view_names())}


@pytest.mark.parametrize("sql", list(ATTACKS.values()), ids=list(ATTACKS))
def test_writes_are_refused_without_write(filled: Store, sql: str) -> None:
    before = _state(filled)
    assert (before["runs"], before["sweeps"], before["metric_values"]) == (2, 1, 3)
    with pytest.raises(GammadbError):
        run_sql(filled, sql)
    assert _state(filled) == before


def test_plain_writes_name_the_flag(filled: Store) -> None:
    with pytest.raises(ReadOnlyViolationError, match="--write"):
        run_sql(filled, "DELETE FROM runs")


def test_write_flag_allows_writes(filled: Store) -> None:
    out = run_sql(filled, "UPDATE runs SET seed = 7 WHERE gamma = 1.0", write=True)
    assert out["rows_affected"].to_list() == [1]
    assert run_sql(filled, "SELECT seed FROM runs ORDER BY gamma")["seed"].to_list() == [0, 7]


def test_views_answer_queries(filled: Store) -> None:
    df = run_sql(filled, "SELECT run_id, gamma, status FROM run_overview ORDER BY gamma")
    assert df["gamma"].to_list() == [0.1, 1.0] and df["status"].to_list() == ["pending"] * 2


def test_sql_errors_are_one_line(filled: Store) -> None:
    with pytest.raises(GammadbError) as info:
        run_sql(filled, "SELEC nonsense")
    assert "\n" not in str(info.value) and str(info.value).startswith("SQL error")


# Found against PostgreSQL 15: psycopg's simple protocol took several statements in one string, so
# the string could open its own read-write transaction; COPY ... TO a file or PROGRAM runs in a
# read-only transaction; and a superuser reads and writes server files from a plain SELECT.
PG_ATTACKS = {
    "begin-read-write": "BEGIN READ WRITE; DELETE FROM metric_values; DROP TABLE runs CASCADE; COMMIT",
    "rollback-begin": "ROLLBACK; BEGIN READ WRITE; DELETE FROM metric_values; DROP TABLE runs CASCADE; COMMIT",
    "start-transaction": "START TRANSACTION READ WRITE; DELETE FROM metric_values; DROP TABLE runs CASCADE; COMMIT",
    "set-default": "SET default_transaction_read_only = off; COMMIT; UPDATE runs SET gamma = 0; "
                   "DELETE FROM metric_values",
    "session-characteristics": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; "
                               "UPDATE runs SET gamma = 0; DELETE FROM metric_values",
    "commit-in-do": "DO $$BEGIN COMMIT; DELETE FROM metric_values; END$$",
    "drop-database": "DROP DATABASE postgres",
    "copy-from": "COPY runs FROM PROGRAM 'echo'",
    "vacuum-full": "VACUUM FULL metric_values",
}


@pytest.fixture
def pg_filled(pg_url: str) -> Iterator[tuple[str, Store]]:
    with Store.open(pg_url) as store:
        yield pg_url, _fill(store)


@pytest.mark.parametrize("sql", list(PG_ATTACKS.values()), ids=list(PG_ATTACKS))
def test_postgres_statements_cannot_reopen_a_write_transaction(pg_filled: tuple[str, Store], sql: str) -> None:
    url, store = pg_filled
    before = _state(store)
    r = runner.invoke(app, ["sql", sql, "--url", url])
    assert r.exit_code in (1, 6), r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert _state(store) == before


def test_postgres_runs_one_statement_per_call(pg_filled: tuple[str, Store]) -> None:
    url, _ = pg_filled
    r = runner.invoke(app, ["sql", "SELECT 1; SELECT 2", "--url", url])
    assert r.exit_code == 1 and "one statement per call" in r.output
    # ...which is the server's prepared-statement parse, not a split on ';' in the text.
    r = runner.invoke(app, ["sql", "SELECT ';' AS s, '100%' AS p;", "--format", "csv", "--url", url])
    assert r.exit_code == 0 and r.output.split() == ["s,p", ";,100%"]


def _server_path() -> Path:
    # The test server runs on this machine and shares /tmp (the pytest tmp_path is not its to write).
    return Path("/tmp") / f"gammadb_test_{uuid.uuid4().hex}"


SERVER_FILE_ATTACKS = {
    "copy-to-file": ("COPY (SELECT 1) TO '{path}'", 6),
    "copy-lowercase-after-comments": ("-- read\n/* a /* nested */ comment */ ; copy runs to '{path}'", 6),
    "copy-to-program": ("COPY (SELECT 1) TO PROGRAM 'touch {path}'", 6),
    "do-reset-role": ("DO $$BEGIN RESET ROLE; EXECUTE 'COPY (SELECT 1) TO ''{path}'''; END$$", 6),
    "lo-export": ("SELECT lo_export(oid, '{path}') FROM pg_largeobject_metadata", 1),
}


@pytest.mark.parametrize("sql, code", list(SERVER_FILE_ATTACKS.values()), ids=list(SERVER_FILE_ATTACKS))
def test_postgres_read_only_sql_writes_no_server_file(pg_filled: tuple[str, Store], sql: str, code: int) -> None:
    url, store = pg_filled
    run_sql(store, "SELECT lo_from_bytea(0, 'x')", write=True)  # a large object for lo_export
    before = _state(store)
    path = _server_path()
    try:
        r = runner.invoke(app, ["sql", "--url", url, "--", sql.format(path=path)])
        assert r.exit_code == code and r.output.startswith("error: "), r.output
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)
    assert _state(store) == before


def test_postgres_superuser_reads_as_pg_read_all_data(pg_filled: tuple[str, Store]) -> None:
    url, store = pg_filled
    # The test server's login role is a superuser: the statement runs without its rights.
    assert run_sql(store, "SELECT current_user AS u")["u"].item() == "pg_read_all_data"
    assert run_sql(store, "SELECT COUNT(*) AS n FROM run_overview")["n"].item() == 2
    with pytest.raises(GammadbError, match="permission denied for function pg_read_file"):
        run_sql(store, "SELECT pg_read_file('PG_VERSION')")
    # --write is the trusted path and keeps the login role.
    assert run_sql(store, "SELECT current_user AS u", write=True)["u"].item() != "pg_read_all_data"


@pytest.mark.parametrize("sql, word", [
    ("select 1", "SELECT"),
    ("  \n\t;; COPY x TO 'f'", "COPY"),
    ("-- c\r\ncopy x", "COPY"),
    ("/* a /* b */ c */ do $$ $$", "DO"),
    ("/* unclosed", ""),
    ("", ""),
    ("Call p()", "CALL"),
    ("(SELECT 1)", ""),
], ids=["plain", "space-semicolons", "line-comment", "nested-comment", "unclosed", "empty", "call", "paren"])
def test_first_keyword_skips_what_postgres_skips(sql: str, word: str) -> None:
    assert first_keyword(sql) == word


def test_vacuum_is_a_refused_write(store_url: str) -> None:
    with Store.open(store_url) as store:
        before = _state(_fill(store))
    copy = _server_path()
    sqls = ["VACUUM", f"VACUUM INTO '{copy}'" if store_url.startswith("sqlite") else "VACUUM ANALYZE runs"]
    for sql in sqls:
        r = runner.invoke(app, ["sql", sql, "--url", store_url])
        assert r.exit_code == 6 and "read-only" in r.output, r.output
    assert not copy.exists()
    with Store.open(store_url) as store:
        assert _state(store) == before


# ------------------------------------------------------------------ reader roles
@pytest.fixture
def reader(pg_filled: tuple[str, Store]) -> Iterator[tuple[str, Store]]:
    """A role name for a reader, dropped again (roles belong to the whole server, not the database)."""
    import psycopg
    from psycopg import sql

    _, store = pg_filled
    name = f"gammadb_reader_{uuid.uuid4().hex[:8]}"
    try:
        yield name, store
    finally:
        with psycopg.connect(libpq_uri(store.url), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_reader_role_reads_and_cannot_write(reader: tuple[str, Store]) -> None:
    name, owner = reader
    role = create_reader_role(owner, name, password="pw")
    assert role.created and role.url.startswith(f"postgresql+psycopg://{name}:pw@")
    before = _state(owner)
    with Store.open(role.url) as store:
        assert _state(store) == before
        assert len(store.runs(sweep="s")) == 2
        assert store.series(sweep="s")["value"].to_list() == [1.0, 0.5, 1 / 3]  # read through ADBC
        for sql in ("DELETE FROM metric_values", "DROP TABLE runs CASCADE", "CREATE TABLE t (a int)",
                    "SET TRANSACTION READ WRITE; DELETE FROM metric_values; UPDATE runs SET gamma = 0"):
            with pytest.raises(GammadbError):
                run_sql(store, sql, write=True)
        with pytest.raises(GammadbError):
            store.ensure_sweep("new", {})
    assert _state(owner) == before
    # Tables created later by the owner (a migration) are readable through the default privileges.
    run_sql(owner, "CREATE TABLE later (a int)", write=True)
    run_sql(owner, "INSERT INTO later VALUES (5)", write=True)
    with Store.open(role.url) as store:
        assert run_sql(store, "SELECT a FROM later")["a"].to_list() == [5]


def test_reader_role_is_idempotent_and_refuses_writers(reader: tuple[str, Store]) -> None:
    name, owner = reader
    assert create_reader_role(owner, name).created
    again = create_reader_role(owner, name)
    assert not again.created and again.url.startswith(f"postgresql+psycopg://{name}@")
    owner_role = run_sql(owner, "SELECT current_user AS u", write=True)["u"].item()
    with pytest.raises(InvalidSpecError, match="can write to the store"):
        create_reader_role(owner, owner_role)
    with pytest.raises(InvalidSpecError, match="bad role name"):
        create_reader_role(owner, "x; DROP TABLE runs")


def test_reader_role_cli_masks_the_password(reader: tuple[str, Store]) -> None:
    name, owner = reader
    url = owner.url.render_as_string(hide_password=False)
    r = runner.invoke(app, ["db", "reader-role", name, "--url", url], env={"GAMMADB_READER_PASSWORD": "s3cret"})
    assert r.exit_code == 0, r.output
    expected = f"postgresql+psycopg://{name}:***@{owner.url.host}:{owner.url.port}/{owner.url.database}"
    assert r.output.strip() == f"created reader role {name}: {expected}"


def test_reader_role_on_sqlite_is_one_line_error(sqlite_url: str) -> None:
    Store.open(sqlite_url).close()
    r = runner.invoke(app, ["db", "reader-role", "analyst", "--url", sqlite_url])
    assert r.exit_code == 2 and r.output.startswith("error: reader roles are a PostgreSQL feature")
    assert r.output.count("\n") == 1
