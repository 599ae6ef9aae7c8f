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
    assert head_revision() == "0002"


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
