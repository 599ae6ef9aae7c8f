"""The batched background writer: exact NaN/inf round-trips, upserts, the ensemble fast path,
backpressure, and progress committed with each batch."""

from __future__ import annotations

import math

import pytest

from gammadb.metrics import LOSS, WEIGHT_CHANGE, MetricKey
from gammadb.store import Store
from tests.store.test_store import spec



def test_nan_and_infinities_round_trip_exactly(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    (run,) = store.ensure_runs(sweep.id, [spec()])
    values = [0.5, math.nan, math.inf, -math.inf, 1e-300, 2.0**-1074]
    with store.writer() as w:
        for step, v in enumerate(values, start=1):
            w.log(run.id, step, {MetricKey(LOSS): v})
    got = store.series([run.id])["value"].to_list()
    assert got[0] == 0.5 and math.isnan(got[1]) and got[2] == math.inf and got[3] == -math.inf
    assert got[4:] == values[4:]


def test_rewritten_step_overwrites_and_never_duplicates(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    (run,) = store.ensure_runs(sweep.id, [spec()])
    with store.writer(batch_rows=3) as w:
        for step in range(1, 6):
            w.log(run.id, step, {MetricKey(LOSS): float(step), MetricKey(WEIGHT_CHANGE, 1): 0.0})
        w.flush()
        w.log(run.id, 2, {MetricKey(LOSS): -2.0})
        w.log(run.id, 2, {MetricKey(LOSS): -3.0})  # twice in one batch: the last one wins
    df = store.series([run.id], metrics=[LOSS])
    assert df["step"].to_list() == [1, 2, 3, 4, 5]
    assert df["value"].to_list() == [1.0, -3.0, 3.0, 4.0, 5.0]
    wc = store.series([run.id], metrics=[WEIGHT_CHANGE])
    assert wc["layer"].unique().to_list() == [1] and wc.height == 5


def test_log_block_stores_what_per_run_logs_store(store: Store) -> None:
    """The ensemble fast path: one call per step for many runs, the same rows and progress."""
    sweep = store.ensure_sweep("s", {})
    runs = store.ensure_runs(sweep.id, [spec(seed=s) for s in range(6)])
    keys = [MetricKey(LOSS), MetricKey(WEIGHT_CHANGE, 1), MetricKey(WEIGHT_CHANGE, 2)]
    half = [r.id for r in runs[:3]], [r.id for r in runs[3:]]
    with store.writer(batch_rows=7) as w:
        for step in range(1, 21):
            rows = [[step + j / 10, math.nan if step == 5 else 0.5, -math.inf] for j in range(3)]
            w.log_block(step, half[0], keys, rows)
            for run_id, row in zip(half[1], rows):
                w.log(run_id, step, dict(zip(keys, row)))
    for a, b in zip(*half):
        x = store.series([a], metrics=[LOSS, WEIGHT_CHANGE]).drop("run_id")
        y = store.series([b], metrics=[LOSS, WEIGHT_CHANGE]).drop("run_id")
        assert x.height == 60 and str(x.to_dicts()) == str(y.to_dicts())  # NaN compares by its text
    assert {r.steps_done for r in store.runs(sweep="s")} == {20}


def test_a_full_queue_makes_the_producer_wait_for_the_store(store: Store) -> None:
    """Backpressure: logging far faster than the store commits never queues more than
    max_backlog_rows (plus one call's rows), and every row still arrives."""
    sweep = store.ensure_sweep("s", {})
    runs = store.ensure_runs(sweep.id, [spec(seed=s) for s in range(50)])
    keys = [MetricKey(LOSS), MetricKey(WEIGHT_CHANGE, 1)]
    ids = [r.id for r in runs]
    with store.writer(batch_rows=500, max_backlog_rows=2000, flush_seconds=60.0) as w:
        for step in range(1, 2001):
            w.log_block(step, ids, keys, [[1.0 / step, 2.0]] * len(ids))
        assert w.max_backlog < 2000 + 100
        assert w.seconds_waiting > 0
    assert int(store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0]) == 2000 * 50 * 2
    with pytest.raises(ValueError, match="max_backlog_rows"):
        store.writer(batch_rows=500, max_backlog_rows=100)


def test_writer_commits_progress_and_heartbeat_with_each_batch(store: Store) -> None:
    sweep = store.ensure_sweep("s", {})
    (run,) = store.ensure_runs(sweep.id, [spec(steps=100)])
    with store.writer() as w:
        for step in range(1, 41):
            w.log(run.id, step, {MetricKey(LOSS): 1.0})
    rec = store.get_run(run.id)
    assert rec.steps_done == 40 and rec.heartbeat_at is not None