"""The store on both backends: runs, upserts, NaN/inf round-trips, summaries, claims."""

from __future__ import annotations

import math

import pytest

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.metrics import LOSS, WEIGHT_CHANGE, MetricKey
from gammadb.records import RunSpec
from gammadb.schema import RunStatus
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
