"""The CLI: every command has help and is documented; errors are one line with the documented codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typing import Any
import pytest
import typer
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.store.versioning import head_revision

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
runner = CliRunner()


def _commands(group: Any, prefix: str = "gammadb") -> list[tuple[str, Any]]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(cmd, "commands"):
            out.extend(_commands(cmd, path))
        else:
            out.append((path, cmd))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_readme_documents_exists() -> None:
    """README's command list ("- `gammadb ...`" items) against the app: a command removed or renamed
    fails here (the test below checks the other way, each command is documented)."""
    documented = set(re.findall(r"^- `(gammadb(?: [a-z][a-z-]*)*)", README, flags=re.MULTILINE))
    assert len(documented) >= 20, sorted(documented)  # the list was found
    assert documented <= {path for path, _ in COMMANDS}, sorted(documented - {path for path, _ in COMMANDS})
    assert {"gammadb run", "gammadb worker", "gammadb analyze optimal-lr", "gammadb sql"} <= documented


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_help_and_is_in_readme(path: str, cmd: Any) -> None:
    assert cmd.help and len(cmd.help.strip()) > 20, f"{path} has no help text"
    assert "Example:" in cmd.help, f"{path}'s help carries no example"
    assert f"`{path}" in README, f"{path} is not documented in README.md"
    result = runner.invoke(app, [*path.split()[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_db_lifecycle_and_listing(sqlite_url: str) -> None:
    r = runner.invoke(app, ["db", "current", "--url", sqlite_url])  # a read: it creates no store
    assert r.exit_code == 3 and r.output.startswith("error: no gammadb store at")
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    r = runner.invoke(app, ["db", "upgrade", "--url", sqlite_url])
    assert r.exit_code == 0 and f"-> {head_revision()}" in r.output
    r = runner.invoke(app, ["sweeps", "ls", "--url", sqlite_url, "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output) == []


def test_import_ls_show_export_sql(store_url: str, tmp_path: Path) -> None:
    from tests.store.test_imports import synthetic

    path = tmp_path / "in.csv"
    synthetic(40).write_csv(path)
    r = runner.invoke(app, ["import", str(path), "--sweep", "imp", "--url", store_url])
    assert r.exit_code == 0, r.output
    assert "12 runs (12 new, 2 diverged)" in r.output
    r = runner.invoke(app, ["runs", "ls", "--sweep", "imp", "--status", "diverged", "--format", "json", "--url", store_url])
    rows = json.loads(r.output)
    assert r.exit_code == 0 and len(rows) == 2 and {x["gamma"] for x in rows} == {10.0}
    r = runner.invoke(app, ["runs", "show", str(rows[0]["run_id"]), "--url", store_url])
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "diverged"
    out = tmp_path / "out.parquet"
    r = runner.invoke(app, ["export", "--sweep", "imp", "--out", str(out), "--url", store_url])
    assert r.exit_code == 0 and out.exists()
    r = runner.invoke(app, ["sql", "SELECT COUNT(*) AS n FROM runs", "--format", "csv", "--url", store_url])
    assert r.exit_code == 0 and r.output.split() == ["n", "12"]
    r = runner.invoke(app, ["sql", "DELETE FROM runs", "--url", store_url])
    assert r.exit_code == 6 and "--write" in r.output


@pytest.mark.parametrize("args, code, text", [
    (["runs", "show", "99"], 3, "no run with id 99"),
    (["runs", "ls", "--sweep", "nope"], 3, "no sweep named 'nope'"),
    (["runs", "ls", "--status", "weird"], 2, "unknown status"),
    (["sql", "SELEC 1"], 1, "SQL error"),
    (["export", "--sweep", "nope", "--out", "x.parquet"], 3, "no sweep"),
], ids=["run", "sweep", "status", "sql", "export"])
def test_errors_are_one_line_with_exit_codes(sqlite_url: str, args: list[str], code: int, text: str) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--url", sqlite_url]).exit_code == 0
    r = runner.invoke(app, [*args, "--url", sqlite_url])
    assert r.exit_code == code, r.output
    assert text in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_wrong_url_and_wrong_password(tmp_path: Path) -> None:
    r = runner.invoke(app, ["sweeps", "ls", "--url", "notaurl"])
    assert r.exit_code == 2 and "not a database URL" in r.output
    r = runner.invoke(app, ["sweeps", "ls", "--url", f"sqlite:///{tmp_path}/missing/dir/x.sqlite"])
    assert r.exit_code == 5 and "does not exist" in r.output
    r = runner.invoke(app, ["sweeps", "ls", "--url", "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/x"])
    assert r.exit_code == 5 and "hunter2" not in r.output
