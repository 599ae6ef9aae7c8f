"""The cache of bucketed series (``series_buckets``, migration 0005): served only while the series is
as it was, bit for bit what computing again gives, refreshed after every kind of write (the writer, a
resume's truncation, an import that replaces, hand-written SQL), never written through a read-only
store, given up on (not waited for) when a writer holds the lock, and migrated both ways. Wherever a
run's summary is written (its end, an import, db summarize) its loss is cached on the 40 grid."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sqlalchemy import text

from gammadb.analysis.downsample import bucketed_grids
from gammadb.buckets import BUCKET_SCHEMA, bucket_frames, pack_buckets, unpack_buckets
from gammadb.metrics import MetricKey
from gammadb.records import RunSpec, RunStatus
from gammadb.store import Store
from gammadb.transfer import import_frame

LOSS = MetricKey("loss")
GRIDS = [22, 40]
FIXTURE = Path(__file__).parents[1] / "data" / "store_0003.sqlite"


def _sweep(store: Store, runs: int = 4, steps: int = 3000, *, seed: int = 0, name: str = "c") -> list[int]:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    frames = []
    for k in range(runs):
        loss = (0.05 + np.exp(-t / (300.0 * (k + 1)))) * rng.lognormal(sigma=0.05, size=steps)
        loss[7 * k] = np.nan if k % 2 else loss[7 * k]  # a NaN inside one series in two
        frames.append(pl.DataFrame({"gamma": 10.0 ** (k - 1), "eta": 0.1, "seed": 0, "step": t, "loss": loss}))
    import_frame(store, pl.concat(frames), name)
    _empty_cache(store)  # the import cached the loss on the 40 grid: these tests start from a cold cache
    return store.runs_frame(name)["run_id"].to_list()


def _empty_cache(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM series_buckets"))


def _fresh(store: Store, ids: list[int]) -> dict[int, pl.DataFrame]:
    """The definition: every series read and bucketed now, no cache."""
    return bucket_frames(store.values_frame(ids, store.metric_id("loss", 0)), GRIDS)


def _cached_rows(store: Store) -> int:
    return int(store.read("SELECT COUNT(*) AS n FROM series_buckets")["n"][0])


def _same(got: dict[int, pl.DataFrame], want: dict[int, pl.DataFrame]) -> None:
    for p in GRIDS:
        assert got[p].equals(want[p]), p  # bit for bit (equals compares NaN as equal, floats exactly)


def test_pack_round_trips_bit_for_bit() -> None:
    df = pl.DataFrame({"run_id": [3, 3, 9], "bucket": [0, 5, 1], "step_lo": [1, 2, 1], "step_hi": [1, 3, 1],
                       "step": [1.0, 2.449, 1.0], "n": [1, 2, 1], "mean": [-0.0, 5e-324, np.inf],
                       "min": [-0.0, 1e-300, 1.0], "max": [1.0, np.nextafter(1.0, 2.0), np.inf],
                       "mean_log": [None, -3.25, 0.0]}, schema=BUCKET_SCHEMA)
    packed = pack_buckets(df)
    assert sorted(packed) == [3, 9] and len(packed[3]) == 2 * 72
    back = unpack_buckets(packed)
    assert back.equals(df) and back["mean_log"].null_count() == 1
    assert np.signbit(back["mean"][0]) and back["mean"][1] == 5e-324


def test_a_second_read_is_served_from_the_cache_bit_for_bit(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _sweep(store)
    want = _fresh(store, ids)
    first = bucketed_grids(store, ids, LOSS, GRIDS)
    _same(first, want)
    assert _cached_rows(store) == len(ids) * len(GRIDS)
    reads: list[list[int]] = []
    real = store.values_frame
    monkeypatch.setattr(store, "values_frame", lambda run_ids, *a, **k: reads.append(list(run_ids)) or real(run_ids, *a, **k))
    _same(bucketed_grids(store, ids, LOSS, GRIDS), want)
    assert reads == []  # nothing read but the cache
    # a grid not cached yet: only it is computed, the series read once more
    assert bucketed_grids(store, ids, LOSS, [10])[10].equals(bucket_frames(real(ids, store.metric_id("loss", 0)), [10])[10])
    assert len(reads) == 1
    # a part of the runs, and runs mixed with one that has no series at all
    _same(bucketed_grids(store, ids[1:3], LOSS, GRIDS), _fresh(store, ids[1:3]))
    _same(bucketed_grids(store, [*ids, 10_000], LOSS, GRIDS), want)


def test_every_kind_of_write_makes_the_cache_compute_again(store: Store) -> None:
    ids = _sweep(store)
    bucketed_grids(store, ids, LOSS, GRIDS)
    mid = store.metric_id("loss", 0)
    # the writer rewrites a step of run 0 (a resume) and appends to run 1
    with store.writer() as w:
        w.log(ids[0], 1500, {LOSS: 123.0})
        w.log(ids[1], 3000, {LOSS: 0.5})
    got = bucketed_grids(store, ids, LOSS, GRIDS)
    _same(got, _fresh(store, ids))
    assert got[40].filter(pl.col("run_id") == ids[0])["max"].max() == 123.0
    # a resume's truncation
    store.delete_steps_after(ids[2], 999)  # a resume's truncation
    got = bucketed_grids(store, ids, LOSS, GRIDS)
    _same(got, _fresh(store, ids))
    assert got[40].filter(pl.col("run_id") == ids[2])["step_hi"].max() == 999
    # an import that replaces values
    import_frame(store, pl.DataFrame({"gamma": 100.0, "eta": 0.1, "seed": 0, "step": [10], "loss": [77.0]}), "c",
                 replace=True)
    got = bucketed_grids(store, ids, LOSS, GRIDS)
    _same(got, _fresh(store, ids))
    assert 77.0 in got[40].filter(pl.col("run_id") == ids[3])["max"].to_list()
    # hand-written SQL: a chunk rewritten in place, then one deleted
    conn = store.raw_connection()
    p = "?" if store.backend == "sqlite" else "%s"
    blob = np.full(1024, 2.0, dtype="<f8").tobytes()
    if store.backend == "sqlite":
        conn.execute(f"UPDATE metric_chunks SET vals = {p} WHERE run_id = {p} AND metric_id = {p} AND first_step = 1024",
                     (blob, ids[1], mid))
        conn.execute(f"DELETE FROM metric_chunks WHERE run_id = {p} AND first_step = 2048", (ids[3],))
    else:
        with conn.transaction():
            conn.execute(f"UPDATE metric_chunks SET vals = {p} WHERE run_id = {p} AND metric_id = {p} AND first_step = 1024",
                         (blob, ids[1], mid))
            conn.execute(f"DELETE FROM metric_chunks WHERE run_id = {p} AND first_step = 2048", (ids[3],))
    conn.close()
    got = bucketed_grids(store, ids, LOSS, GRIDS)
    _same(got, _fresh(store, ids))
    assert got[40].filter((pl.col("run_id") == ids[1]) & (pl.col("step_lo") >= 1024) & (pl.col("step_hi") < 2048))[
        "mean"].unique().to_list() == [2.0]
    assert got[40].filter(pl.col("run_id") == ids[3])["step_hi"].max() == 2047


def test_a_stale_or_damaged_row_is_never_served(store: Store) -> None:
    ids = _sweep(store, runs=2)
    want = _fresh(store, ids)
    bucketed_grids(store, ids, LOSS, GRIDS)
    conn = store.raw_connection()
    p = "?" if store.backend == "sqlite" else "%s"
    junk = np.zeros(9 * 3, dtype="<f8").tobytes()
    sqls = [(f"UPDATE series_buckets SET buckets = {p}, version = version - 1 WHERE run_id = {p}", (junk, ids[0])),
            (f"UPDATE series_buckets SET buckets = {p} WHERE run_id = {p}", (b"\x01" * 100, ids[1]))]
    if store.backend == "sqlite":
        for sql, args in sqls:
            conn.execute(sql, args)
    else:
        with conn.transaction():
            for sql, args in sqls:
                conn.execute(sql, args)
    conn.close()
    _same(bucketed_grids(store, ids, LOSS, GRIDS), want)
    _same(bucketed_grids(store, ids, LOSS, GRIDS), want)  # and the recomputed rows replaced them


def test_running_runs_are_not_cached(store: Store) -> None:
    ids = _sweep(store, runs=2)

    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET status = :s WHERE id = :i"), {"s": RunStatus.RUNNING.value, "i": ids[0]})
    _same(bucketed_grids(store, ids, LOSS, GRIDS), _fresh(store, ids))
    cached = store.read("SELECT DISTINCT run_id FROM series_buckets")["run_id"].to_list()
    assert cached == [ids[1]]


def test_a_read_only_store_reads_right_and_writes_nothing(store_url: str) -> None:
    with Store.open(store_url) as rw:
        ids = _sweep(rw)
        want = _fresh(rw, ids)
    with Store.open(store_url, read_only=True) as ro:
        _same(bucketed_grids(ro, ids, LOSS, GRIDS), want)
    with Store.open(store_url) as rw:
        assert _cached_rows(rw) == 0
        bucketed_grids(rw, ids, LOSS, GRIDS)
        assert _cached_rows(rw) == len(ids) * len(GRIDS)
    with Store.open(store_url, read_only=True) as ro:  # and it reads the cache the others wrote
        _same(bucketed_grids(ro, ids, LOSS, GRIDS), want)


def test_a_locked_sqlite_store_is_read_without_waiting_for_the_lock(sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url) as store:
        ids = _sweep(store)
        want = _fresh(store, ids)
        holder = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a writer mid-transaction
        try:
            t0 = time.perf_counter()
            _same(bucketed_grids(store, ids, LOSS, GRIDS), want)
            assert time.perf_counter() - t0 < 20  # not the 60 s busy timeout of the store's own writes
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert _cached_rows(store) == 0
        bucketed_grids(store, ids, LOSS, GRIDS)
        assert _cached_rows(store) == len(ids) * len(GRIDS)


def test_deleting_a_sweep_takes_its_cache_and_versions(store: Store) -> None:
    ids = _sweep(store)
    _sweep(store, runs=1, name="other", seed=1)
    bucketed_grids(store, ids, LOSS, GRIDS)
    store.delete_sweep("c")
    left = store.read("SELECT run_id FROM run_versions")["run_id"].to_list()
    assert _cached_rows(store) == 0 and len(left) == 1 and left[0] not in ids


def test_0005_upgrades_the_0003_fixture_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    shutil.copy(FIXTURE, path)
    store = Store.open(f"sqlite:///{path}", check=False)
    try:
        store.upgrade("0005")
        assert store.current_revision() == "0005"
        runs = store.read("SELECT DISTINCT run_id FROM metric_chunks ORDER BY 1")["run_id"].to_list()
        versions = store.read("SELECT run_id, version FROM run_versions ORDER BY 1").rows()
        assert [v[0] for v in versions] == runs and {v[1] for v in versions} == {1}
        ids = store.read("SELECT id FROM runs")["id"].to_list()
        _same(bucketed_grids(store, ids, LOSS, GRIDS), _fresh(store, ids))
        store.downgrade("0004")
        names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()}
        assert not names & {"run_versions", "series_buckets", "series_written_insert", "series_written_update",
                            "series_written_delete"}
        with store.writer() as w:  # the 0004 layout writes without the triggers
            w.log(ids[0], 5, {LOSS: 1.0})
        store.upgrade("0005")
        assert store.current_revision() == "0005"
    finally:
        store.close()


def test_a_cache_table_dropped_by_hand_only_means_computing(store: Store) -> None:
    """The cache is derived data: with its table gone (a hand edit), reads compute as without it."""
    ids = _sweep(store, runs=2)
    want = _fresh(store, ids)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE series_buckets")
    _same(bucketed_grids(store, ids, LOSS, GRIDS), want)
    # and every write that fills the cache as it goes (an import, a run's end) still lands
    import_frame(store, pl.DataFrame({"gamma": 1.0, "eta": 0.1, "seed": 0, "step": range(100), "loss": 1.0}), "after-drop")
    (run,) = store.ensure_runs(store.get_sweep("after-drop").id, [_spec(0.2)])
    store.mark_running(run.id, worker="w", device="cpu")
    with store.writer() as w:
        for t in range(50):
            w.log(run.id, t, {LOSS: 1.0 / (t + 1)})
    store.finish_run(run.id, RunStatus.COMPLETED, steps_done=49)
    assert store.get_run(run.id).status == RunStatus.COMPLETED
    assert store.read("SELECT COUNT(*) AS n FROM run_summaries")["n"][0] == 4


# ------------------------------------------------------------------- the loss cached where summaries are written
def _spec(eta: float) -> RunSpec:
    return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=16,
                   batch_size=8, gamma=1.0, eta=eta, seed=0, dtype="float32", steps_planned=3000,
                   config={"eta": eta})


def _loss_cache(store: Store) -> dict[int, tuple[int, bytes]]:
    """{run_id: (version, blob)} of the loss's 40-a-decade rows, each at its run's current version."""
    rows = store.read(
        "SELECT b.run_id, b.version, b.buckets FROM series_buckets b JOIN run_versions v "
        "ON v.run_id = b.run_id AND v.version = b.version "
        "WHERE b.per_decade = 40 AND b.layout = 1 AND b.metric_id = (SELECT id FROM metrics WHERE name = 'loss' AND layer = 0)")
    return {int(r): (int(v), bytes(b)) for r, v, b in rows.iter_rows()}


def _no_series_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    reads: list[list[int]] = []
    real = store.values_frame
    monkeypatch.setattr(store, "values_frame", lambda run_ids, *a, **k: reads.append(list(run_ids)) or real(run_ids, *a, **k))
    return reads


def test_an_import_caches_every_run_s_loss_on_the_report_s_grid(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    t = np.arange(3000)
    frames = [pl.DataFrame({"gamma": g, "eta": 0.1, "seed": 0, "step": t,
                            "loss": np.exp(-t / 500.0) * rng.lognormal(sigma=0.1, size=t.size)})
              for g in (0.1, 1.0, 10.0)]
    frames[2] = frames[2].with_columns(pl.when(pl.col("step") >= 2000).then(np.inf).otherwise(pl.col("loss")).alias("loss"))
    import_frame(store, pl.concat(frames), "imp")
    ids = store.runs_frame("imp")["run_id"].to_list()
    want = bucket_frames(store.values_frame(ids, store.metric_id("loss", 0)), [40])[40]
    cache = _loss_cache(store)
    assert sorted(cache) == sorted(ids)  # the diverged run too: its finite steps
    assert unpack_buckets({r: b for r, (_, b) in cache.items()}).equals(want)
    reads = _no_series_read(store, monkeypatch)
    assert bucketed_grids(store, ids, LOSS, [40])[40].equals(want)
    assert reads == []  # the first read after the import reads no value


def test_a_run_s_end_caches_its_loss_and_a_failed_run_s_does_not(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = store.ensure_sweep("ends", {})
    done, failed = store.ensure_runs(sweep.id, [_spec(0.1), _spec(0.2)])
    for run in (done, failed):
        store.mark_running(run.id, worker="w", device="cpu")
    with store.writer() as w:
        for t in range(3000):
            w.log(done.id, t, {LOSS: 1.0 / (t + 1)})
            w.log(failed.id, t, {LOSS: 2.0 / (t + 1)})
    store.finish_run(failed.id, RunStatus.FAILED, steps_done=2999, error="boom")
    assert _loss_cache(store) == {}
    store.finish_run(done.id, RunStatus.COMPLETED, steps_done=2999)
    assert sorted(_loss_cache(store)) == [done.id]
    reads = _no_series_read(store, monkeypatch)
    got = bucketed_grids(store, [done.id], LOSS, [40])[40]
    assert reads == [] and got["n"].sum() == 2999 and got["step_hi"].max() == 2999
    # a resume that rewrites steps makes the row stale: served no more, computed again
    store.mark_running(done.id, worker="w", device="cpu")
    with store.writer() as w:
        w.log(done.id, 10, {LOSS: 7.0})
    assert _loss_cache(store) == {}
    store.finish_run(done.id, RunStatus.COMPLETED, steps_done=2999)
    assert sorted(_loss_cache(store)) == [done.id]
    assert bucketed_grids(store, [done.id], LOSS, [40])[40].filter(pl.col("step_lo") == 10)["max"][0] == 7.0


def test_db_summarize_caches_the_runs_left_uncached_and_a_read_only_store_writes_nothing(store_url: str) -> None:
    with Store.open(store_url) as rw:
        ids = _sweep(rw, runs=3)  # imported, then the cache emptied
        assert _loss_cache(rw) == {}
    with Store.open(store_url, read_only=True) as ro:
        assert ro.cache_loss_buckets(ids) == 0
    with Store.open(store_url) as rw:
        assert _loss_cache(rw) == {}
        assert rw.rebuild_summaries("c") == 3
        assert sorted(_loss_cache(rw)) == sorted(ids)
        assert rw.cache_loss_buckets(ids) == 0  # all current: nothing bucketed again


def test_the_fill_gives_up_on_a_locked_sqlite_store_and_loses_nothing(sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url) as store:
        ids = _sweep(store, runs=2)
        holder = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a writer mid-transaction
        try:
            t0 = time.perf_counter()
            assert store.cache_loss_buckets(ids) == 0
            assert time.perf_counter() - t0 < 20  # not the 60 s busy timeout of the store's own writes
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.cache_loss_buckets(ids) == 2


def test_the_fill_reads_a_bounded_slice_of_values_at_a_time(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from gammadb.store import bucket_cache

    ids = _sweep(store, runs=4, steps=3000)
    monkeypatch.setattr(bucket_cache, "FILL_VALUES", 6500)  # two runs' values a slice
    reads = _no_series_read(store, monkeypatch)
    assert store.cache_loss_buckets(ids) == 4
    assert reads == [ids[:2], ids[2:]]
    assert unpack_buckets({r: b for r, (_, b) in _loss_cache(store).items()}).equals(_fresh(store, ids)[40])
    # a run longer than a slice on its own is left to its first read, not held whole in memory
    _empty_cache(store)
    reads.clear()
    monkeypatch.setattr(bucket_cache, "FILL_VALUES", 2999)
    assert store.cache_loss_buckets(ids) == 0 and reads == [] and _loss_cache(store) == {}


def test_a_failing_fill_never_fails_the_run_s_end(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong while bucketing (here a bug's exception) leaves the cache to the next read;
    the run's end, already committed, stands and the call returns."""
    from gammadb.store import bucket_cache

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the bucketing")

    monkeypatch.setattr(bucket_cache, "bucket_frame", broken)
    sweep = store.ensure_sweep("broken", {})
    (run,) = store.ensure_runs(sweep.id, [_spec(0.1)])
    store.mark_running(run.id, worker="w", device="cpu")
    with store.writer() as w:
        for t in range(100):
            w.log(run.id, t, {LOSS: 1.0 / (t + 1)})
    store.finish_run(run.id, RunStatus.COMPLETED, steps_done=99)
    assert store.get_run(run.id).status == RunStatus.COMPLETED and _loss_cache(store) == {}
    assert store.read(f"SELECT final_loss FROM run_summaries WHERE run_id = {run.id}")["final_loss"][0] == 0.01
