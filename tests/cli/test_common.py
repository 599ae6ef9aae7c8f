"""gammadb.cli.common and the CLI's newcomer paths: tables that fit the terminal, one --out flag that
says what it wrote, SQL from files and stdin, no store created by a read, --version, --where hints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import gammadb
from gammadb.cli import app
from gammadb.cli.common import _rich_table
from tests.cli.test_analyze import table_rows

runner = CliRunner()
LONG = "not testable here: the sweep has only 2 gammas below 0.1 and the fit needs 3 (add them with gammadb run)"


def _wide_frame() -> pl.DataFrame:
    cols = ["run_id", "gamma", "eta", "seed", "status", "steps_done", "steps_planned", "diverged_at",
            "final_loss", "min_loss", "tail_mean_loss", "initial_loss", "width", "depth", "why"]
    return pl.DataFrame({
        "run_id": [1, 2], "gamma": [0.00316227766, 1000.0], "eta": [0.31622776601683794, 1e-3], "seed": [0, 2],
        "status": ["completed", "diverged"], "steps_done": [20000, 313], "steps_planned": [20000, 20000],
        "diverged_at": [None, 313], "final_loss": [1.234567e-05, None], "min_loss": [1.1e-05, 0.5],
        "tail_mean_loss": [1.2e-05, None], "initial_loss": [0.49, 0.51], "width": [128, 128], "depth": [3, 3],
        "why": [None, LONG],
    }).select(cols)


@pytest.mark.parametrize("columns", [100, 80, 60], ids=["100", "80", "60"])
def test_a_table_fits_the_terminal_marks_empty_cells_and_moves_long_texts_to_notes(monkeypatch, columns: int) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    text = _rich_table(_wide_frame(), "runs")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns
    table, notes = lines[:-2], lines[-2:]
    assert not any("not testable" in line for line in table)
    assert notes[0].startswith("[1] not testable here")
    cells = [c for line in table for c in line.split()]
    assert cells.count("-") >= 3  # diverged_at, final_loss, tail_mean_loss (and why) of the empty cells


def test_a_wide_terminal_shows_every_value_whole(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = _rich_table(_wide_frame(), "runs")
    assert max(len(line) for line in text.splitlines()) <= 200
    rows = table_rows(text)
    assert rows[0][:4] == ["1", "0.00316228", "0.316228", "0"] and rows[0][8] == "1.23457e-05"
    assert rows[1][7:11] == ["313", "-", "0.5", "-"] and rows[1][-1] == "[1]"


def test_a_narrow_table_that_fits_is_left_alone(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _rich_table(pl.DataFrame({"gamma": [0.1, None], "eta": [0.316228, 1.0]}), None)
    assert table_rows(text) == [["0.1", "0.316228"], ["-", "1"]]


def test_runs_ls_in_an_empty_folder_names_the_store_and_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GAMMADB_URL", raising=False)
    for args in (["runs", "ls"], ["sweeps", "ls"], ["sql", "SELECT 1"], ["analyze", "claims", "--sweep", "quick"],
                 ["db", "current"], ["export", "--sweep", "quick", "--out", "x.csv"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 3, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: no gammadb store at {tmp_path / 'gammadb.sqlite'}")
        assert "gammadb db upgrade" in lines[0] and "--url" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_still_creates_the_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GAMMADB_URL", raising=False)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    r = runner.invoke(app, ["runs", "ls", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output) == []


def test_version_and_the_code_version_of_a_sweep(store) -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"gammadb {gammadb.code_version()}"
    repo = Path(gammadb.__file__).resolve().parents[1]
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if sha.returncode != 0:
        pytest.skip("not running from a git checkout")
    assert gammadb.code_version().startswith(f"{gammadb.__version__}+g{sha.stdout.strip()}")
    assert store.ensure_sweep("cv", {}).code_version == gammadb.code_version()


def test_code_version_without_git_is_the_version(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    monkeypatch.setattr(gammadb, "_CODE_VERSION", None)
    assert gammadb.code_version() == gammadb.__version__
    monkeypatch.setattr(gammadb, "_CODE_VERSION", None)  # computed again by the next caller


@pytest.mark.parametrize("how", ["file", "stdin", "argument"])
def test_sql_from_a_file_stdin_or_argument_with_a_leading_comment(sqlite_url: str, tmp_path: Path, how: str) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--url", sqlite_url]).exit_code == 0
    query = "-- how many runs\nSELECT COUNT(*) AS n, 7 AS seven FROM runs;\n"
    path = tmp_path / "q.sql"
    path.write_text(query)
    args = {"file": ["--file", str(path)], "stdin": ["-"], "argument": [query]}[how]
    r = runner.invoke(app, ["sql", *args, "--format", "csv", "--url", sqlite_url], input=query if how == "stdin" else None)
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["n,seven", "0,7"]


def test_sql_needs_exactly_one_source(sqlite_url: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--url", sqlite_url]).exit_code == 0
    r = runner.invoke(app, ["sql", "--url", sqlite_url])
    assert r.exit_code == 2 and "--file" in r.output
    r = runner.invoke(app, ["sql", "--file", str(tmp_path / "nope.sql"), "--url", sqlite_url])
    assert r.exit_code == 3 and "nope.sql" in r.output and len(r.output.strip().splitlines()) == 1


def test_out_writes_atomically_and_says_wrote(sqlite_url: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade", "--url", sqlite_url]).exit_code == 0
    out = tmp_path / "one.csv"
    r = runner.invoke(app, ["sql", "SELECT 1 AS one", "--format", "csv", "--out", str(out), "--url", sqlite_url])
    assert r.exit_code == 0 and r.output.strip() == f"wrote {out}"
    assert out.read_text().split() == ["one", "1"] and not list(tmp_path.glob(".*.tmp"))


def test_where_matches_the_values_the_tables_show_and_a_miss_lists_them(store) -> None:
    """The quick preset's grid, created (not trained): `--where "eta = 0.316228"` (the table's text of
    10^-0.5) selects those runs; a value that is not in the grid says which are."""
    from gammadb.analysis.downsample import select_runs
    from gammadb.errors import InvalidSpecError
    from gammadb.runners import presets
    from gammadb.runners.plan import plan_of, run_spec

    plan = plan_of(presets.preset("quick"))
    sweep = store.ensure_sweep("quick", dict(plan.spec))
    store.ensure_runs(sweep.id, [run_spec(c) for c in plan.configs])
    etas = sorted({c.hyper_params()["eta"] for c in plan.configs})
    assert any(abs(e - 10 ** -0.5) < 1e-12 for e in etas)
    runs = select_runs(store, "quick", ["eta = 0.316228"])
    assert runs.height > 0 and runs["eta"].unique().to_list() == [pytest.approx(10 ** -0.5, rel=1e-12)]
    for e in etas:  # every eta as a table shows it selects its runs, and only them
        assert set(select_runs(store, "quick", [f"eta = {e:.6g}"])["eta"].unique().to_list()) == {e}
    with pytest.raises(InvalidSpecError) as err:
        select_runs(store, "quick", ["eta = 0.3"])
    msg = str(err.value)
    assert msg.startswith("no run of sweep 'quick' matches eta = 0.3; eta values present: ")
    assert ", ".join(f"{e:.6g}" for e in etas[:3]) in msg
    r = runner.invoke(app, ["plot", "curves", "--sweep", "quick", "--where", "eta = 0.3", "--url",
                            store.url.render_as_string(hide_password=False), "--out", "x.html"])
    assert r.exit_code == 2 and "eta values present: " in r.output and len(r.output.strip().splitlines()) == 1
