"""`gammadb sql` is read-only unless --write, enforced by the connection on both backends."""

from __future__ import annotations

import pytest

from gammadb.errors import GammadbError, ReadOnlyViolationError
from gammadb.sqlexec import run_sql
from gammadb.store import Store
from tests.test_store import spec

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


@pytest.fixture
def filled(store: Store) -> Store:
    sweep = store.ensure_sweep("s", {})
    store.ensure_runs(sweep.id, [spec(0.1), spec(1.0)])
    return store


@pytest.mark.parametrize("sql", list(ATTACKS.values()), ids=list(ATTACKS))
def test_writes_are_refused_without_write(filled: Store, sql: str) -> None:
    with pytest.raises(GammadbError):
        run_sql(filled, sql)
    assert run_sql(filled, "SELECT COUNT(*) AS n FROM runs")["n"].to_list() == [2]
    assert run_sql(filled, "SELECT COUNT(*) AS n FROM sweeps")["n"].to_list() == [1]


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
