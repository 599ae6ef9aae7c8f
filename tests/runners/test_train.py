"""train(): step semantics, metrics, divergence, determinism, checkpoints and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gammadb.errors import InvalidSpecError
from gammadb.metrics import (
    DATA_PASSES,
    FEATURE_ALIGNMENT,
    LOSS,
    NTK_ALIGNMENT,
    NTK_DISTANCE,
    SHARPNESS,
    TEST_ACCURACY,
    TEST_LOSS,
    WEIGHT_CHANGE,
    MetricKey,
)
from gammadb.runners.checkpoint import CheckpointPolicy, checkpoint_files, load_checkpoint
from gammadb.runners.config import RunConfig
from gammadb.runners.data import make_task
from gammadb.runners.toy import lambda_star, toy_config
from gammadb.runners.train import ListSink, resolve_device, train

SMALL = RunConfig(width=32, batch_size=16, steps=30, cadence=10, probe_size=16, test_size=200, sharpness_size=64, sharpness_iters=5)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _records_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        sa == sb and va.keys() == vb.keys() and all(_same(va[k], vb[k]) for k in va) for (sa, va), (sb, vb) in zip(a, b)
    )


def test_steps_are_numbered_from_one_and_log_the_state_before_each_update() -> None:
    sink = ListSink()
    outcome = train(SMALL, sink, device="cpu")
    assert outcome.status == "completed" and outcome.steps_done == 30 and outcome.diverged_at is None
    assert [s for s, _ in sink.records] == list(range(1, 31))
    first = sink.records[0][1]
    # Step 1 sees the init: f == 0, so the loss is the mean squared target of the first batch.
    y0 = make_task(SMALL).batch(0).y
    assert first[MetricKey(LOSS)] == pytest.approx(float((y0**2).mean()), rel=1e-6)
    assert all(first[MetricKey(WEIGHT_CHANGE, layer)] == 0.0 for layer in (1, 2, 3))
    last = sink.records[-1][1]
    assert all(last[MetricKey(WEIGHT_CHANGE, layer)] > 0 for layer in (1, 2, 3))
    assert MetricKey(WEIGHT_CHANGE, 4) not in last
    assert all(-1 <= v <= 1 for v in sink.values(FEATURE_ALIGNMENT))
    assert len(sink.values(FEATURE_ALIGNMENT)) == 30


def test_cadence_metrics_land_on_cadence_steps() -> None:
    sink = ListSink()
    train(SMALL, sink, device="cpu")
    for name in (TEST_LOSS, NTK_ALIGNMENT, NTK_DISTANCE, SHARPNESS):
        assert [s for s, _ in sink.series(name)] == [10, 20, 30]
    assert sink.series(TEST_ACCURACY) == [] and sink.series(DATA_PASSES) == []  # regression, online
    sink1 = ListSink()
    train(SMALL.replace(cadence="log", steps=5), sink1, device="cpu")
    assert sink1.series(NTK_DISTANCE)[0] == (1, 0.0)  # K(theta_0) vs K(0)
    assert [s for s, _ in sink1.series(TEST_LOSS)] == [1, 2, 3, 5]  # theta_0, theta_1, theta_2; theta_5 at the end


@pytest.mark.mnist5k
def test_classification_and_finite_data_metrics() -> None:
    config = RunConfig(task="mnist5k", width=16, batch_size=500, steps=10, cadence=4, eta=0.5, probe_size=8, test_size=100, sharpness_size=16, sharpness_iters=3, ntk=False)
    sink = ListSink()
    train(config, sink, device="cpu")
    assert [s for s, _ in sink.series(TEST_ACCURACY)] == [4, 8, 10]
    # The last step measures theta_T, after the last update (10 batches drawn).
    assert sink.series(DATA_PASSES) == [(4, 3 * 500 / 4000), (8, 7 * 500 / 4000), (10, 10 * 500 / 4000)]
    assert all(0 <= a <= 1 for a in sink.values(TEST_ACCURACY))


@pytest.mark.parametrize(
    "changes",
    [{"loss_fn": "xent", "task": "teacher_cls"}, {"optimizer": "signsgd", "eta": 1e-2}, {"optimizer": "adam", "eta": 1e-2}, {"task": "gmm", "feature_alignment": False}],
    ids=["xent", "signsgd", "adam", "no-alignment"],
)
def test_variants_train_and_reduce_the_loss(changes: dict) -> None:
    config = SMALL.replace(steps=60, cadence="log", ntk=False, sharpness=False, **changes)
    sink = ListSink()
    assert train(config, sink, device="cpu").status == "completed"
    test_losses = sink.values(TEST_LOSS)  # at steps 1, 2, 5, ..., 60, on the fixed held-out set
    assert test_losses[-1] < 0.99 * test_losses[0]
    assert (FEATURE_ALIGNMENT in {k.name for k in sink.records[0][1]}) == config.feature_alignment


def test_divergence_is_reported_at_the_first_non_finite_step() -> None:
    sink = ListSink()
    outcome = train(SMALL.replace(eta=1e4, steps=200), sink, device="cpu")
    assert outcome.status == "diverged"
    assert outcome.diverged_at == outcome.steps_done == sink.records[-1][0]
    losses = sink.values(LOSS)
    assert not math.isfinite(losses[-1]) and all(math.isfinite(v) for v in losses[:-1])


def test_same_seed_same_run_and_data_independent_of_seed() -> None:
    config = SMALL.replace(cadence="none")
    a, b, c = ListSink(), ListSink(), ListSink()
    train(config, a, device="cpu")
    train(config, b, device="cpu")
    train(config.replace(seed=1), c, device="cpu")
    assert _records_equal(a.records, b.records)
    # Different init, same data: f == 0 at init, so step 1's loss depends on the data only.
    assert a.values(LOSS)[0] == c.values(LOSS)[0]
    assert a.values(LOSS)[1:] != c.values(LOSS)[1:]


def test_float64_at_tiny_gamma_tracks_the_lazy_limit_where_float32_cancels() -> None:
    """With eta = c gamma^2 the loss curve tends to a gamma-independent (kernel) limit as gamma -> 0,
    with O(gamma) corrections. float64 (dtype='auto' below gamma = 1e-2) shows exactly that: its
    distance to the limit shrinks 10x per decade of gamma. float32 cancels: the centered difference is
    O(gamma) on O(1) outputs, so its error grows as gamma shrinks and dwarfs float64's."""
    base = RunConfig(width=64, batch_size=32, steps=40, cadence="none", feature_alignment=False)

    def losses(gamma: float, dtype: str) -> torch.Tensor:
        sink = ListSink()
        train(base.replace(gamma=gamma, eta=gamma**2, dtype=dtype), sink, device="cpu")  # type: ignore[arg-type]
        return torch.tensor(sink.values(LOSS), dtype=torch.float64)

    assert base.replace(gamma=1e-4).resolved_dtype == "float64"
    limit = losses(1e-7, "float64")
    assert float(limit[-5:].mean()) < 0.85 * float(limit[:5].mean())  # it learns

    def error(gamma: float, dtype: str) -> float:
        return float((losses(gamma, dtype) - limit).abs().max())

    f64 = {g: error(g, "auto") for g in (1e-4, 1e-5)}
    f32 = {g: error(g, "float32") for g in (1e-5, 1e-6)}
    assert f64[1e-4] < 2e-4
    assert 5 < f64[1e-4] / f64[1e-5] < 20  # O(gamma): no rounding floor in float64
    assert f32[1e-5] > 50 * f64[1e-5]
    assert f32[1e-6] > 10 * f32[1e-5] and f32[1e-6] > 1e-2  # float32 breaks down as gamma shrinks


def test_toy_sharpness_matches_the_exact_hessian() -> None:
    """At the balanced minimum the top eigenvalue is lambda* (docs/theory.md, with loss (f - y)^2 / 2). At
    init (f = 0, residual -1) the Hessian is 11^T / gamma^2 - (11^T - I) / gamma: along the balanced
    direction L / gamma^2 - (L - 1) / gamma."""
    gamma, depth = 0.5, 3
    sink = ListSink()
    train(toy_config(gamma, 0.05, depth, steps=300, dtype="float64", sharpness_iters=30), sink, device="cpu")
    assert sink.values(LOSS)[-1] < 1e-20
    assert sink.values(SHARPNESS)[0] == pytest.approx(depth / gamma**2 - (depth - 1) / gamma, rel=1e-9)
    assert sink.values(SHARPNESS)[-1] == pytest.approx(float(lambda_star(gamma, depth)), rel=1e-9)


def test_should_stop_and_resume_are_bit_identical(tmp_path: Path) -> None:
    config = SMALL.replace(optimizer="adam", eta=1e-3, cadence=7)
    straight = ListSink()
    train(config, straight, device="cpu")

    first = ListSink()
    calls = iter(range(10**6))
    outcome = train(config, first, device="cpu", should_stop=lambda: next(calls) >= 17, checkpoint=CheckpointPolicy(tmp_path, every_steps=5))
    assert outcome.status == "stopped" and outcome.steps_done == 17
    assert [int(p.stem.split("_")[1]) for p in checkpoint_files(tmp_path)] == [15, 17]  # keep=2 prunes step 5, 10
    second = ListSink()
    outcome = train(config, second, device="cpu", checkpoint=CheckpointPolicy(tmp_path, every_steps=5))
    assert outcome.status == "completed" and outcome.steps_done == 30
    assert second.records[0][0] == 18
    assert _records_equal(first.records + second.records, straight.records)
    state = load_checkpoint(checkpoint_files(tmp_path)[-1])
    assert state["step"] == 30 and RunConfig.from_json(state["config"]) == config
    assert state["data"] == {"position": 30}


def test_resume_after_a_crash_between_checkpoints(tmp_path: Path) -> None:
    """Steps after the last checkpoint are recomputed identically (the sink sees them again)."""
    config = SMALL.replace(cadence="none")
    straight = ListSink()
    train(config, straight, device="cpu")
    policy = CheckpointPolicy(tmp_path, every_steps=8)

    class Crash(Exception):
        pass

    class CrashingSink(ListSink):
        def log(self, step, values):
            if step == 21:
                raise Crash
            super().log(step, values)

    with pytest.raises(Crash):
        train(config, CrashingSink(), device="cpu", checkpoint=policy)
    resumed = ListSink()
    train(config, resumed, device="cpu", checkpoint=policy)
    assert resumed.records[0][0] == 17
    assert _records_equal(resumed.records, straight.records[16:])


def test_resume_refuses_another_config_but_allows_more_steps(tmp_path: Path) -> None:
    policy = CheckpointPolicy(tmp_path)
    train(SMALL.replace(steps=5, cadence="none"), ListSink(), device="cpu", checkpoint=policy)
    with pytest.raises(InvalidSpecError, match="different run config"):
        train(SMALL.replace(steps=5, cadence="none", eta=0.2), ListSink(), device="cpu", checkpoint=policy)
    more = ListSink()
    assert train(SMALL.replace(steps=8, cadence="none"), more, device="cpu", checkpoint=policy).steps_done == 8
    assert [s for s, _ in more.records] == [6, 7, 8]


def test_time_based_checkpoints(tmp_path: Path) -> None:
    train(SMALL.replace(steps=6, cadence="none"), ListSink(), device="cpu", checkpoint=CheckpointPolicy(tmp_path, every_seconds=1e-9, keep=3))
    assert [p.name for p in checkpoint_files(tmp_path)] == [f"step_{s:09d}.pt" for s in (4, 5, 6)]


def test_bad_config_raises_before_training() -> None:
    with pytest.raises(InvalidSpecError, match="gamma must be"):
        train(RunConfig(gamma=-1.0), ListSink(), device="cpu")


def test_device_auto() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_run_diverging_at_a_cadence_step_records_its_metrics_and_ends_diverged() -> None:
    """Near divergence the Hessian overflows: sharpness is logged as a non-finite value (data), the
    run ends 'diverged', alone and as an ensemble member, and the other member is unaffected."""
    from gammadb.runners.ensemble import train_ensemble

    config = RunConfig(model="mlp", task="teacher", depth=3, width=64, batch_size=32, gamma=1.0, eta=31.6227766017,
                       steps=40, probe_size=32, test_size=100, sharpness_size=64, sharpness_iters=10, cadence="every")
    alone = ListSink()
    outcome = train(config, alone, device="cpu")
    assert outcome.status == "diverged"
    sharp = alone.values(SHARPNESS)
    assert len(sharp) >= 2 and math.isfinite(sharp[0]) and not math.isfinite(sharp[-1])
    for batched in (False, True):
        sinks = [ListSink(), ListSink()]
        outcomes = train_ensemble([config, config.replace(eta=0.1)], sinks, device="cpu", batched_sharpness=batched)
        assert [o.status for o in outcomes] == ["diverged", "completed"]
        assert outcomes[0].diverged_at == outcome.diverged_at
        assert all(math.isfinite(v) for v in sinks[1].values(SHARPNESS))
        assert not math.isfinite(sinks[0].values(SHARPNESS)[-1])
