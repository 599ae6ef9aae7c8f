"""Schema migrations: head equals the ORM, every revision steps both ways, stale stores are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from gammadb.errors import SchemaOutOfDateError, SchemaTooNewError
from gammadb.schema import Base
from gammadb.store import Store, head_revision

DATA = Path(__file__).parents[1] / "data"


def _diff(store: Store) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_one_head() -> None:
    assert head_revision() == "0006"
    from gammadb.migrations import HEAD_REVISION

    assert HEAD_REVISION == head_revision()  # the constant Store.open compares with, without alembic


def test_empty_to_head_matches_orm(store: Store) -> None:
    assert store.current_revision() == head_revision()
    assert _diff(store) == []


def test_downgrade_then_upgrade_every_revision(store: Store) -> None:
    store.downgrade("0001")
    assert store.current_revision() == "0001"
    store.downgrade("base")
    assert store.current_revision() is None
    store.upgrade("0001")
    store.upgrade("head")
    assert store.current_revision() == head_revision()
    assert _diff(store) == []


def test_stale_schema_is_refused_with_the_fixing_command(store_url: str) -> None:
    s = Store.open(store_url, check=False)
    s.upgrade("0001")
    s.close()
    with pytest.raises(SchemaOutOfDateError, match="gammadb db upgrade"):
        Store.open(store_url)


def test_schema_from_a_newer_gammadb_is_refused(store: Store, store_url: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    with pytest.raises(SchemaTooNewError, match="newer than this gammadb"):
        Store.open(store_url)


def test_old_fixture_database_upgrades_and_works(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    shutil.copy(DATA / "store_0001.sqlite", path)
    url = f"sqlite:///{path}"
    with pytest.raises(SchemaOutOfDateError):
        Store.open(url)
    s = Store.open(url, check=False)
    assert s.upgrade() == ("0001", head_revision())
    s.close()
    with Store.open(url) as s:
        assert s.rebuild_summaries(sweep="old") == 2
        runs = s.runs_frame("old")
        assert runs["final_loss"].to_list() == [pytest.approx(1 / 20)] * 2
        assert [r.config for r in s.runs("old")] == [{"test_reduction": "mean"}] * 2  # 0003
        assert _diff(s) == []


def test_parallel_first_opens_create_the_schema_once(tmp_path: Path) -> None:
    """Several processes opening a store that does not exist yet: one creates it, none fails."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        revs = pool.map(_open_and_report, [url] * 4)
    assert revs == [head_revision()] * 4


def _open_and_report(url: str) -> str:
    with Store.open(url) as s:
        return s.current_revision() or ""


def test_0003_marks_runs_stored_before_test_reduction_as_mean(store_url: str) -> None:
    """Runs stored before RunConfig.test_reduction logged the test loss averaged over the outputs:
    0003 says so in their config (in batches of 1,000: 1,002 runs cross a boundary), leaves a
    config that already holds the key and every point_key alone; downgrading keeps the marks."""
    from gammadb.records import RunSpec

    def spec(i: int, config: dict) -> RunSpec:
        return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=8,
                       batch_size=4, gamma=1.0, eta=0.1 + i, seed=0, dtype="float32", steps_planned=10,
                       config=config)

    s = Store.open(store_url, check=False)
    try:
        s.upgrade("0002")
        sweep = s.ensure_sweep("legacy", {})
        legacy = [spec(i, {"task": "teacher", "out_dim": 10, "eta": 0.1 + i}) for i in range(1001)]
        marked = spec(9999, {"task": "teacher", "out_dim": 10, "test_reduction": "sum"})
        s.ensure_runs(sweep.id, [*legacy, marked])
        before = {r.id: r.config for r in s.runs("legacy")}
        keys = _point_keys(s)
        s.upgrade("0003")
        assert s.current_revision() == "0003"
        after = {r.id: r.config for r in s.runs("legacy")}
        assert len(after) == 1002
        for run_id, config in before.items():
            assert after[run_id] == (config if "test_reduction" in config else {**config, "test_reduction": "mean"})
        assert _point_keys(s) == keys
        assert sorted(c["test_reduction"] for c in after.values()).count("mean") == 1001
        s.downgrade("0002")
        assert {r.id: r.config for r in s.runs("legacy")} == after
        s.upgrade()
        assert {r.id: r.config for r in s.runs("legacy")} == after
    finally:
        s.close()


def _point_keys(store: Store) -> dict[int, str]:
    return dict(store.read("SELECT id, point_key FROM runs").iter_rows())


def test_a_run_migrated_by_0003_keeps_its_identity_for_the_runners(sqlite_url: str) -> None:
    """The runners match stored runs to grid points by point_key: a run whose config 0003 extended
    must still be the same grid point (else a rerun or the adaptive scan would not find it)."""
    from gammadb.runners.config import RunConfig
    from gammadb.runners.plan import point_key, run_spec

    config = RunConfig(model="mlp", task="teacher", depth=2, width=8, batch_size=4, gamma=1.0, eta=0.1, steps=5)
    s = Store.open(sqlite_url, check=False)
    try:
        s.upgrade("0002")
        sweep = s.ensure_sweep("legacy", {})
        (run,) = s.ensure_runs(sweep.id, [run_spec(config)])
        s.upgrade()
        (migrated,) = s.runs("legacy")
        assert migrated.config["test_reduction"] == "mean"
        assert point_key(migrated) == run_spec(config).point_key() == migrated.point_key
        # ensure_runs of the same grid point finds it instead of creating another run
        assert [r.id for r in s.ensure_runs(sweep.id, [run_spec(config)])] == [run.id]
    finally:
        s.close()


def test_a_migration_the_database_refuses_is_one_line_and_changes_nothing(store: Store, store_url: str) -> None:
    """A store edited by hand (a table a downgrade drops is already gone): `gammadb db downgrade`
    says so in one line, exits non-zero, and the store stays at its revision with its tables."""
    from typer.testing import CliRunner

    from gammadb.cli import app

    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE run_versions"))
    store.close()
    res = CliRunner().invoke(app, ["db", "downgrade", "0004", "--url", store_url])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert "refused a migration step" in res.output and "nothing was changed" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with Store.open(store_url, check=False) as again:
        assert again.current_revision() == head_revision()
        assert again.read("SELECT COUNT(*) AS n FROM series_buckets")["n"][0] == 0  # still there


def test_0006_fills_each_summary_s_largest_loss_and_downgrades(tmp_path: Path) -> None:
    """The 0003 fixture (NaN, +-inf and the largest float64 inside a series, a diverged run, a
    resumed run, a pending run without a summary's values): 0006 fills run_summaries.max_loss with
    what ``gammadb db summarize`` computes from the series, and its downgrade drops the column."""
    path = tmp_path / "s.sqlite"
    shutil.copy(DATA / "store_0003.sqlite", path)
    url = f"sqlite:///{path}"
    s = Store.open(url, check=False)
    try:
        s.upgrade("0005")
        before = s.read("SELECT * FROM run_summaries ORDER BY run_id")
        s.upgrade()
        migrated = s.summaries([1, 2, 3, 4])
        # the largest finite loss: 1.797e308 in the completed run, 1.5^39 before the NaNs, and the
        # resumed run's first segment (3.0 at step 0, kept); none for the pending run
        assert [migrated[i].max_loss for i in (1, 2, 3, 4)] == [1.7976931348623157e308, 1.5**39, 3.0, None]
        assert s.rebuild_summaries("fixture") == 4
        assert {i: r.max_loss for i, r in s.summaries([1, 2, 3, 4]).items()} == {
            i: r.max_loss for i, r in migrated.items()}
        s.downgrade("0005")
        assert s.read("SELECT * FROM run_summaries ORDER BY run_id").columns == before.columns
        assert s.upgrade() == ("0005", head_revision())
    finally:
        s.close()
