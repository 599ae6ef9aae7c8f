"""gammadb.analysis.shared: inside shared_reads(store) each run's series is read once per grid and
results are computed once per key; outside, every call reads afresh; nothing leaks between blocks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sqlalchemy import text

from gammadb.analysis.downsample import bucketed_grids, bucketed_series
from gammadb.analysis.shared import Scope, scope_of, shared_reads, shared_result
from gammadb.metrics import MetricKey
from gammadb.store import Store
from gammadb.transfer import import_frame


@pytest.fixture
def sweep(store: Store) -> list[int]:
    """Sweep "s": 6 runs of 400 steps of loss (gamma 0.1, 1, 10 x 2 seeds); their run ids."""
    rng = np.random.default_rng(0)
    t = np.arange(400)
    frames = [pl.DataFrame({"gamma": g, "eta": 0.1, "seed": s, "step": t, "loss": rng.lognormal(size=t.size)})
              for g in (0.1, 1.0, 10.0) for s in (0, 1)]
    import_frame(store, pl.concat(frames), "s")
    with store.engine.begin() as conn:  # the import cached the loss's 40 grid: start cold, reads count
        conn.execute(text("DELETE FROM series_buckets"))
    return store.runs_frame("s")["run_id"].to_list()


@pytest.fixture
def reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The run ids of every series read from ``store`` (the reads still go to the database)."""
    seen: list[tuple[int, ...]] = []
    real = store.values_frame

    def values_frame(run_ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(tuple(run_ids))
        return real(run_ids, *args, **kwargs)

    monkeypatch.setattr(store, "values_frame", values_frame)
    # the store's own cache of buckets (tests/store/test_bucket_cache.py) stays empty: these tests
    # count what the in-process scope reads
    monkeypatch.setattr(store, "cache_buckets", lambda *args, **kwargs: False)
    return seen


def test_a_block_reads_each_series_once(store: Store, sweep: list[int], reads: list[tuple[int, ...]]) -> None:
    fresh = {p: bucketed_series(store, sweep, "loss", p) for p in (40, 9)}
    assert len(reads) == 2  # outside a block, every call reads
    reads.clear()
    with shared_reads(store):
        some = bucketed_series(store, sweep[:2], "loss", 40)
        assert reads == [tuple(sweep[:2])]
        everything = bucketed_series(store, sweep, "loss", 40)  # only the runs not read yet
        assert reads[1] == tuple(sweep[2:])
        again = bucketed_series(store, sweep[3:5], "loss", 40)  # a subset of what was read: no read
        both = bucketed_grids(store, sweep, MetricKey("loss"), [40, 9])  # grid 9: one more read, all runs
        assert len(reads) == 3 and reads[2] == tuple(sweep)
        with shared_reads(store):  # an inner block shares the outer one's reads
            assert bucketed_series(store, sweep, "loss", 9).equals(fresh[9]) and len(reads) == 3
    assert everything.equals(fresh[40]) and both[40].equals(fresh[40]) and both[9].equals(fresh[9])
    assert some.equals(fresh[40].filter(pl.col("run_id").is_in(sweep[:2])))
    assert again.equals(fresh[40].filter(pl.col("run_id").is_in(sweep[3:5])))
    assert scope_of(store) is None
    bucketed_series(store, sweep, "loss", 40)
    assert len(reads) == 4  # the block's reads are gone with it


def test_a_block_sees_the_store_as_it_was_and_the_next_block_as_it_is(store: Store, sweep: list[int]) -> None:
    with shared_reads(store):
        before = bucketed_series(store, sweep, "loss", 40)
        import_frame(store, pl.DataFrame({"gamma": 100.0, "eta": 0.1, "seed": 0, "step": np.arange(400),
                                          "loss": 1.0}), "s")
        ids = store.runs_frame("s")["run_id"].to_list()
        assert bucketed_series(store, sweep, "loss", 40).equals(before)
        assert bucketed_series(store, ids, "loss", 40).height > before.height  # the new run is read
    with shared_reads(store):
        assert bucketed_series(store, ids, "loss", 40).equals(bucketed_series(store, ids, "loss", 40))


def test_results_are_computed_once_per_key_and_errors_are_not_kept(store: Store, tmp_path) -> None:
    calls: list[str] = []

    def build(key: str) -> str:
        calls.append(key)
        if key == "bad" and calls.count("bad") == 1:
            raise RuntimeError("first try fails")
        return key.upper()

    assert shared_result(store, "a", lambda: build("a")) == "A"
    assert shared_result(store, "a", lambda: build("a")) == "A" and calls == ["a", "a"]  # no block: each time
    calls.clear()
    with shared_reads(store) as scope:
        assert isinstance(scope, Scope) and scope_of(store) is scope
        assert [shared_result(store, "a", lambda: build("a")) for _ in range(3)] == ["A"] * 3
        with pytest.raises(RuntimeError):
            shared_result(store, "bad", lambda: build("bad"))
        assert shared_result(store, "bad", lambda: build("bad")) == "BAD"
        with Store.open(f"sqlite:///{tmp_path / 'other.sqlite'}") as other:  # another store shares nothing
            assert scope_of(other) is None
            assert shared_result(other, "a", lambda: build("a")) == "A"
    assert calls == ["a", "bad", "bad", "a"]


def test_a_kept_scope_is_shared_by_later_blocks(store: Store, sweep: list[int], reads: list[tuple[int, ...]]) -> None:
    """The dashboard keeps one scope per state of a sweep, for the charts requested one by one."""
    scope = Scope(store)
    with shared_reads(store, scope):
        first = bucketed_series(store, sweep, "loss", 40)
    with shared_reads(store, scope):
        assert bucketed_series(store, sweep[1:], "loss", 40).equals(first.filter(pl.col("run_id").is_in(sweep[1:])))
    assert len(reads) == 1
