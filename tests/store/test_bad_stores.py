"""Bad stores and bad URLs: each gets one `error: ...` line and its exit code, and is left as it was."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.store import Store, head_revision

runner = CliRunner()


def _error_line(r: Any, code: int) -> str:
    """The single `error: ...` line of a command that exited with ``code`` (and no traceback)."""
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # not an uncaught exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- not a database
def _random_bytes(n: int) -> bytes:
    rng = random.Random(11)
    return bytes(rng.randrange(256) for _ in range(n))


NOT_DATABASES = {
    "random-bytes": _random_bytes(4096),
    "text": b"name,loss\nrun1,0.5\n",
    "sqlite-header-then-garbage": b"SQLite format 3\x00" + _random_bytes(8192),
}
COMMANDS = [["db", "current"], ["db", "upgrade"], ["db", "downgrade", "base"], ["sweeps", "ls"]]


@pytest.mark.parametrize("content", list(NOT_DATABASES.values()), ids=list(NOT_DATABASES))
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, content: bytes, args: list[str]) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(content)
    line = _error_line(runner.invoke(app, [*args, "--url", f"sqlite:///{path}"]), 5)
    assert "not" in line and "SQLite database" in line and str(path) in line
    assert path.read_bytes() == content


# ---------------------------------------------------------------------- another program's database
def _make_foreign(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(20))"))
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)"))
        conn.execute(text("INSERT INTO users VALUES (1, 'ada')"))
    engine.dispose()


def _tables_and_users(url: str) -> tuple[list[str], list[tuple]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        users = [tuple(r) for r in conn.execute(text("SELECT id, name FROM users"))]
    engine.dispose()
    return tables, users


@pytest.mark.parametrize("args", [["db", "upgrade"], ["sweeps", "ls"], ["db", "downgrade", "base"]],
                         ids=["db upgrade", "sweeps ls", "db downgrade"])
def test_another_programs_database_is_refused_and_left_unchanged(store_url: str, args: list[str]) -> None:
    _make_foreign(store_url)
    before = _tables_and_users(store_url)
    sqlite_file = Path(store_url.removeprefix("sqlite:///")) if store_url.startswith("sqlite") else None
    sha = _sha(sqlite_file) if sqlite_file else None

    line = _error_line(runner.invoke(app, [*args, "--url", store_url]), 5)
    assert "not gammadb's (orders, users)" in line and "--force" in line

    assert _tables_and_users(store_url) == before == (["orders", "users"], [(1, "ada")])
    if sqlite_file:  # not even its journal mode changed
        assert _sha(sqlite_file) == sha
        assert not Path(f"{sqlite_file}-wal").exists()


def test_another_programs_database_is_described_and_upgraded_only_with_force(store_url: str) -> None:
    _make_foreign(store_url)
    r = runner.invoke(app, ["db", "current", "--url", store_url])
    assert r.exit_code == 0, r.output
    expected = f"none (head {head_revision()}: not a gammadb store: it holds other tables (orders, users))"
    assert r.output.strip() == expected

    r = runner.invoke(app, ["db", "upgrade", "--force", "--url", store_url])
    assert r.exit_code == 0 and r.output.strip().endswith(f"-> {head_revision()}"), r.output
    tables, users = _tables_and_users(store_url)
    assert {"orders", "users", "runs", "alembic_version"} <= set(tables) and users == [(1, "ada")]
    with Store.open(store_url) as store:  # now a gammadb store: opens without complaint
        assert store.current_revision() == head_revision()


# ---------------------------------------------------------------------- a schema from a newer gammadb
def test_a_schema_from_a_newer_gammadb_is_never_migrated(store: Store, store_url: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    tables = sorted(inspect(store.engine).get_table_names())
    store.close()

    for args in (["db", "upgrade"], ["db", "downgrade", "0001"], ["db", "downgrade", "base"]):
        line = _error_line(runner.invoke(app, [*args, "--url", store_url]), 4)
        assert "revision ffff9999, newer than this gammadb" in line and "pip install -U gammadb" in line
        assert "db upgrade" not in line

    r = runner.invoke(app, ["db", "current", "--url", store_url])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"ffff9999 (head {head_revision()}: newer than this gammadb")
    assert "pip install -U gammadb" in r.output and "db upgrade" not in r.output

    with Store.open(store_url, check=False) as s:  # untouched
        assert s.current_revision() == "ffff9999"
        assert sorted(inspect(s.engine).get_table_names()) == tables


def test_an_unknown_target_revision_is_one_line(store_url: str) -> None:
    runner.invoke(app, ["db", "upgrade", "--url", store_url])
    for args in (["db", "downgrade", "nope"], ["db", "upgrade", "--revision", "nope"]):
        line = _error_line(runner.invoke(app, [*args, "--url", store_url]), 2)
        assert "'nope'" in line and "revisions: base, 0001" in line
    with Store.open(store_url, check=False) as s:
        assert s.current_revision() == head_revision()


# ---------------------------------------------------------------------- unwritable places
def test_a_store_under_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory\n")
    line = _error_line(runner.invoke(app, ["db", "upgrade", "--url", f"sqlite:///{blocker}/sub/store.sqlite"]), 5)
    assert f"cannot be created: {blocker} is a file" in line
    assert blocker.read_text() == "a file, not a directory\n"


def test_a_store_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    line = _error_line(runner.invoke(app, ["db", "upgrade", "--url", f"sqlite:///{tmp_path}"]), 5)
    assert f"{tmp_path} is a directory" in line


# root writes through chmod 555; without the capabilities that let it, it cannot
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def _without_write_rights(directory: Path) -> list[str]:
    """A command prefix under which writes into ``directory`` (mode 555) really fail, or skip."""
    prefix = _NO_DAC if os.geteuid() == 0 else []
    if prefix and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a directory unwritable")
    probe = subprocess.run([*prefix, "touch", str(directory / "probe")], capture_output=True)
    if probe.returncode == 0:
        (directory / "probe").unlink()
        pytest.skip("writes into a mode-555 directory succeed here")
    return prefix


def test_a_new_store_in_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        prefix = _without_write_rights(ro)
        command = [sys.executable, "-m", "gammadb", "db", "upgrade", "--url", f"sqlite:///{ro}/store.sqlite"]
        p = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        assert p.returncode == 5, p.stderr
        assert p.stdout == "" and "Traceback" not in p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "must be writable" in lines[0], p.stderr
        assert f"sqlite:///{ro}/store.sqlite" in lines[0]
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------- malformed URLs
BAD_URLS = {
    "port-not-a-number": ("postgresql+psycopg://alice:s3cret@127.0.0.1:abc/db", "bad port"),
    "port-out-of-range": ("postgresql+psycopg://alice:s3cret@127.0.0.1:99999/db", "99999 is not 1 to 65535"),
    "unknown-sqlite-driver": ("sqlite+foo:///x.sqlite", "unsupported driver 'foo'"),
    "unsupported-pg-driver": ("postgresql+psycopg2://alice:s3cret@127.0.0.1:1/db", "unsupported driver 'psycopg2'"),
    "unknown-database": ("mysql://alice:s3cret@127.0.0.1/db", "unsupported database 'mysql'"),
    "garbage": ("::not a url::", "not a database URL"),
}


@pytest.mark.parametrize("url, problem", list(BAD_URLS.values()), ids=list(BAD_URLS))
def test_a_malformed_url_is_one_line_with_its_problem(url: str, problem: str) -> None:
    line = _error_line(runner.invoke(app, ["sweeps", "ls", "--url", url]), 2)
    assert problem in line
    assert "s3cret" not in line
    if "s3cret" in url and "mysql" not in url:
        assert "alice:***@" in line
