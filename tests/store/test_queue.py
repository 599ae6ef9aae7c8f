"""`gammadb.store.queue`: claims hand out pending runs only. A claim that handed out a finished run
once made a sweep loop forever, caught only by a hang; here it fails at once."""

from __future__ import annotations

import math

import polars as pl

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
