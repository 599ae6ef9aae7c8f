"""`gammadb.store.queue`: claims hand out pending runs only. A claim that handed out a finished run
once made a sweep loop forever, caught only by a hang; here it fails at once. Runs that end together
are recorded from one read and one commit."""

from __future__ import annotations

import math

import polars as pl
import pytest

from gammadb.metrics import MetricKey
from gammadb.records import RunSpec
from gammadb.records import RunStatus
from gammadb.store import Store
from gammadb.transfer import import_frame


def _spec(eta: float) -> RunSpec:
    return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=16,
                   batch_size=8, gamma=1.0, eta=eta, seed=0, dtype="float32", steps_planned=10,
                   config={"eta": eta})


def test_claims_hand_out_pending_runs_only(store: Store) -> None:
    steps = list(range(5))
    import_frame(store, pl.DataFrame({
        "gamma": 1.0, "eta": [0.1] * 5 + [9.0] * 5, "seed": 0, "step": steps + steps,
        "loss": [1.0, 0.8, 0.6, 0.5, 0.4, 1.0, 5.0, math.inf, math.inf, math.inf],
    }), "claims")
    sweep = store.get_sweep("claims")
    pending, failed = store.ensure_runs(sweep.id, [_spec(0.5), _spec(0.7)])
    store.finish_run(failed.id, RunStatus.FAILED, steps_done=0, error="boom")
    before = {r.id: r.status for r in store.runs(sweep="claims")}
    assert sorted(before.values()) == sorted(
        [RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.PENDING, RunStatus.FAILED])

    claimed = store.claim_next(sweep.id)
    assert claimed is not None and claimed.id == pending.id and claimed.status == RunStatus.RUNNING
    # completed, diverged, failed and running runs are never handed out again
    assert store.claim_next(sweep.id) is None
    assert store.claim_next(sweep.id, run_ids=list(before)) is None
    assert store.claim_many(sweep.id, list(before), limit=10) == []
    after = {r.id: r.status for r in store.runs(sweep="claims")}
    assert after == {**before, pending.id: RunStatus.RUNNING}


def test_runs_ended_together_are_summarised_from_one_read_and_committed_at_once(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ensemble's members end in one finish_runs: statuses, errors and summaries as finish_run
    records each, from one read of their losses (in slices of bounded size), and their losses
    bucketed into the cache in one call."""
    from gammadb.store import bucket_cache

    sweep = store.ensure_sweep("together", {})
    runs = store.ensure_runs(sweep.id, [_spec(0.1 * (k + 1)) for k in range(5)])
    ids = [r.id for r in runs]
    with store.writer() as w:
        for k, run_id in enumerate(ids):
            for t in range(200):
                w.log(run_id, t, {MetricKey("loss"): math.inf if (k == 3 and t >= 150) else (k + 1.0) / (t + 1)})
    ends = [(ids[0], RunStatus.COMPLETED, 199, None), (ids[1], RunStatus.COMPLETED, 199, None),
            (ids[2], RunStatus.COMPLETED, 199, None), (ids[3], RunStatus.DIVERGED, 150, 150),
            (ids[4], RunStatus.FAILED, 120, None)]
    reads: list[list[int]] = []
    fills: list[list[int]] = []
    real_values, real_fill = store.values_frame, store.cache_loss_buckets
    monkeypatch.setattr(store, "values_frame", lambda run_ids, *a, **kw: reads.append(list(run_ids)) or real_values(run_ids, *a, **kw))
    monkeypatch.setattr(store, "cache_loss_buckets", lambda run_ids: fills.append(list(run_ids)) or real_fill(run_ids))
    monkeypatch.setattr(bucket_cache, "FILL_VALUES", 450)  # two runs' losses a slice
    store.finish_runs(ends, error="boom: cannot reach postgresql://u:abc123@db.example/x")
    assert reads[:2] == [ids[:2], ids[2:4]] and fills == [ids[:4]]  # then the cache fill's own reads
    got = store.runs_frame("together").sort("run_id")
    assert got["status"].to_list() == ["completed"] * 3 + ["diverged", "failed"]
    assert got["steps_done"].to_list() == [199, 199, 199, 150, 120] and got["diverged_at"].to_list()[3] == 150
    errors = {r.id: r.error for r in store.runs(sweep="together")}
    assert all(e is not None and "abc123" not in e and "boom" in e for e in errors.values())  # masked
    summaries = store.read("SELECT * FROM run_summaries ORDER BY run_id")
    assert summaries["run_id"].to_list() == ids[:4]  # a failed run has none
    store.rebuild_summaries(run_ids=ids[:4])  # what each finish_run would have written (read by another path)
    again = store.read("SELECT * FROM run_summaries ORDER BY run_id")
    assert summaries.drop("updated_at").equals(again.drop("updated_at"))
    assert summaries.filter(pl.col("run_id") == ids[3])["diverged"].to_list() == [True]
