"""The store facade on both backends: runs by point key, summaries, claims, requeue, errors
(the writer's tests are in test_writer.py)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import text

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.metrics import LOSS, MetricKey
from gammadb.records import RUN_COLUMNS, RunSpec
from gammadb.records import RunStatus
from gammadb.store import Store


def spec(gamma: float = 1.0, eta: float = 0.1, seed: int = 0, steps: int = 10) -> RunSpec:
    return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=64,
                   batch_size=32, gamma=gamma, eta=eta, seed=seed, dtype="float32", steps_planned=steps,
                   config={"model": "mlp", "gamma": gamma, "eta": eta, "seed": seed})


def test_resubmitting_a_point_finds_the_existing_run(store: Store) -> None:
    sweep = store.ensure_sweep("s", {"x": 1})
    first = store.ensure_runs(sweep.id, [spec(0.1), spec(1.0), spec(1.0, seed=1)])
    again = store.ensure_runs(sweep.id, [spec(1.0), spec(0.1)])
    assert [r.id for r in again] == [first[1].id, first[0].id]
    assert len(store.runs(sweep="s")) == 3
    assert store.ensure_sweep("s", {"other": 2}).id == sweep.id


def test_summary_of_a_diverged_run(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    (run,) = store.ensure_runs(sweep.id, [spec()])
    losses = [4.0, 3.0, 1.0, 2.0, math.inf]
    with store.writer() as w:
        for step, v in enumerate(losses, start=1):
            w.log(run.id, step, {MetricKey(LOSS): v})
    store.finish_run(run.id, RunStatus.DIVERGED, steps_done=5, diverged_at=5)
    s = store.summaries([run.id])[run.id]
    assert (s.initial_loss, s.final_loss, s.min_loss, s.min_loss_step) == (4.0, None, 1.0, 3)
    assert s.diverged and s.steps_logged == 5 and s.tail_mean_loss is None
    row = store.runs_frame("s").row(0, named=True)
    assert row["status"] == "diverged" and row["diverged_at"] == 5


def test_claims_never_hand_out_a_run_twice(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    store.ensure_runs(sweep.id, [spec(eta=e) for e in (0.1, 0.2, 0.3)])
    claimed = [store.claim_next(sweep.id, worker=f"w{i}") for i in range(4)]
    ids = [c.id for c in claimed if c is not None]
    assert len(ids) == 3 == len(set(ids)) and claimed[3] is None
    assert {r.status for r in store.runs(sweep="s")} == {RunStatus.RUNNING}


def test_requeue_failed_and_stale_but_never_diverged(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    a, b, c = store.ensure_runs(sweep.id, [spec(eta=e) for e in (0.1, 0.2, 0.3)])
    store.finish_run(a.id, RunStatus.FAILED, steps_done=0, error="boom")
    store.finish_run(b.id, RunStatus.DIVERGED, steps_done=3, diverged_at=3)
    store.mark_running(c.id, worker="elsewhere:1")
    assert store.requeue("s") == []
    assert store.requeue("s", failed=True) == [a.id]
    assert store.requeue("s", stale_after_s=-1) == [c.id]
    assert store.get_run(b.id).status == RunStatus.DIVERGED


def test_unknown_names_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no sweep named 'nope'"):
        store.get_sweep("nope")
    with pytest.raises(NotFoundError):
        store.get_run(999)
    with pytest.raises(InvalidSpecError):
        store.ensure_sweep("", {})


def test_credentials_never_appear_in_messages() -> None:
    from gammadb.errors import GammadbError

    with pytest.raises(GammadbError) as info:
        Store.open("postgresql+psycopg://alice:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_a_read_only_store_reads_without_a_write_lock_and_refuses_writes(store_url: str) -> None:
    """Store.open(read_only=True) (the dashboard's): reads work while another connection holds the
    write lock (SQLite), every write is refused by the database, and nothing changes."""
    import sqlite3

    from gammadb.errors import GammadbError
    from gammadb.urls import sqlite_path

    rw = Store.open(store_url)
    sweep = rw.ensure_sweep("ro", {})
    rw.ensure_runs(sweep.id, [spec(0.1, 1.0)])
    rw.close()
    ro = Store.open(store_url, read_only=True)
    holder = None
    try:
        if ro.backend == "sqlite":
            holder = sqlite3.connect(sqlite_path(ro.url), isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # a worker in the middle of a write
        assert [r.gamma for r in ro.runs("ro")] == [0.1]
        assert ro.get_sweep("ro").name == "ro"
        assert ro.runs_frame("ro").height == 1
        if holder is not None:
            holder.execute("ROLLBACK")
        with pytest.raises(GammadbError):
            ro.ensure_sweep("other", {})
        with pytest.raises(GammadbError):
            ro.reset_runs([r.id for r in ro.runs("ro")])
    finally:
        if holder is not None:
            holder.close()
        ro.close()
    with Store.open(store_url) as again:
        assert [s for s in again.sweeps_frame()["name"].to_list()] == ["ro"]


def test_a_read_only_store_reads_from_many_threads_at_once(sqlite_url: str) -> None:
    """The dashboard answers from a pool of request threads: more than five reading at once must not
    close each other's SQLite connections (SQLAlchemy's SingletonThreadPool did: errors, segfaults)."""
    import threading

    with Store.open(sqlite_url) as rw:
        rw.ensure_runs(rw.ensure_sweep("ro", {}).id, [spec(0.1, 1.0)])
    ro = Store.open(sqlite_url, read_only=True)
    failures: list[str] = []

    def read() -> None:
        try:
            for _ in range(50):
                assert [r.gamma for r in ro.runs("ro")] == [0.1]
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=read) for _ in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        ro.close()
    assert failures == [] and not any(t.is_alive() for t in threads), failures[:3]


def test_a_read_only_store_is_never_created(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    with pytest.raises(NotFoundError, match="no gammadb store at"):
        Store.open(f"sqlite:///{path}", read_only=True)
    assert not path.exists()


def test_an_interrupt_inside_a_copy_is_the_interrupt_and_the_store_stays_as_it_was(pg_url: str, caplog) -> None:
    """Ctrl-C can land while a PostgreSQL COPY is open on the session's connection (an import's
    chunks): that connection cannot roll back ("another command is already in progress"). The
    interrupt must come out as itself, not as a driver error with a traceback (exit 130, not 1), with
    nothing logged (SQLAlchemy's pool logs a traceback when a connection it resets fails), the
    transaction must be gone, and the store must work on."""
    import logging

    caplog.set_level(logging.WARNING)
    store = Store.open(pg_url)
    try:
        sweep = store.ensure_sweep("s", {})
        with pytest.raises(KeyboardInterrupt):
            with store.session_scope() as s:
                s.execute(text("INSERT INTO sweeps (name, spec, code_version, created_at) "
                               "VALUES ('half', '{}', 'x', now())"))
                raw = s.connection().connection.dbapi_connection
                raw.pgconn.send_query(b"COPY metric_chunks (run_id, metric_id, first_step, n, vals) FROM STDIN")
                raise KeyboardInterrupt  # as the signal does, between the COPY's start and its end
        assert not caplog.records, [r.getMessage() for r in caplog.records]  # "Exception during reset ..."
        assert store.sweeps_frame()["name"].to_list() == ["s"]  # 'half' was rolled back
        (run,) = store.ensure_runs(sweep.id, [RunSpec(model="mlp", dataset="synthetic", loss_fn="mse",
                                                      optimizer="sgd", depth=2, width=8, batch_size=4, gamma=1.0,
                                                      eta=0.1, seed=0, dtype="float32", steps_planned=3, config={})])
        with store.writer() as w:
            w.log(run.id, 0, {MetricKey(LOSS): 1.0})
        assert store.series([run.id])["value"].to_list() == [1.0]
    finally:
        store.close()


def test_the_core_reads_use_the_orm_models_columns(store: Store) -> None:
    """get_sweep reads through a Core table and the analysis reads cast run columns from a written-out
    map (so a read-only command never imports the ORM): both must say what the models say."""
    from gammadb.schema import Run, Sweep
    from gammadb.store.analysis_reads import RUN_COLUMN_TYPES
    from gammadb.store.sweeps import _SWEEPS

    assert [c.name for c in _SWEEPS.c] == [c.name for c in Sweep.__table__.c]
    for core, orm in zip(_SWEEPS.c, Sweep.__table__.c):
        assert type(core.type) is type(orm.type) and getattr(core.type, "length", None) == getattr(orm.type, "length", None)
        assert getattr(core.type, "timezone", None) == getattr(orm.type, "timezone", None)
    kinds = {int: pl.Int64(), float: pl.Float64(), str: pl.String()}
    assert RUN_COLUMN_TYPES == {c: kinds[Run.__table__.c[c].type.python_type] for c in RUN_COLUMNS}
    made = store.ensure_sweep("core", {"gamma": [0.1, 1.0], "nested": {"a": [1, 2]}})
    assert store.get_sweep("core") == made
    with pytest.raises(NotFoundError, match="no sweep named 'nope' \\(sweeps: core\\)"):
        store.get_sweep("nope")
