"""Sweeps against a real store: every step recorded, idempotent re-runs, divergence, crash recovery."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from gammadb.records import RunStatus
from gammadb.store import Store
from gammadb.runners.config import RunConfig
from gammadb.runners.eta_scan import replay
from gammadb.runners.plan import SweepPlan, WorkOptions
from gammadb.runners.sweep import run_sweep

ROOT = Path(__file__).parents[2]


def tiny(**kw) -> RunConfig:
    base = dict(model="mlp", task="teacher", depth=3, width=16, batch_size=8, steps=25, cadence="log",
                sharpness_iters=5, test_size=64)
    return RunConfig(**{**base, **kw})


def plan(name: str = "tiny", etas=(0.05, 0.2), gammas=(0.5, 2.0), **kw) -> SweepPlan:
    configs = [tiny(gamma=g, eta=e, **kw) for g in gammas for e in etas]
    return SweepPlan(name=name, spec={"test": True}, configs=configs)


def count_values(store: Store) -> int:
    return int(store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0])


def loss_cached(store: Store) -> set[int]:
    """The runs whose loss the store's cache holds (40 a decade) at the run's current version."""
    return set(store.read(
        "SELECT b.run_id FROM series_buckets b JOIN run_versions v ON v.run_id = b.run_id AND v.version = b.version "
        "JOIN metrics m ON m.id = b.metric_id WHERE m.name = 'loss' AND m.layer = 0 AND b.per_decade = 40"
    )["run_id"].to_list())


def test_sweep_records_every_step_and_reruns_add_nothing(store: Store) -> None:
    rep = run_sweep(store, plan(), WorkOptions(device="cpu"))
    assert (rep.total, rep.completed + rep.diverged, rep.failed) == (4, 4, 0)
    runs = store.runs_frame("tiny")
    assert runs["status"].to_list() == ["completed"] * 4
    assert runs["steps_done"].to_list() == [25] * 4
    loss = store.series(runs["run_id"].to_list(), metrics=["loss"])
    assert loss.group_by("run_id").agg(pl.col("step").n_unique())["step"].to_list() == [25] * 4
    wc = store.series(runs["run_id"].to_list(), metrics=["weight_change"])
    assert sorted(wc["layer"].unique().to_list()) == [1, 2, 3]
    assert runs["final_loss"].is_not_null().all()
    assert loss_cached(store) == set(runs["run_id"].to_list())  # each run's end bucketed its loss
    n = count_values(store)
    again = run_sweep(store, plan(), WorkOptions(device="cpu"))
    assert again.skipped == 4 and again.completed == 0
    assert count_values(store) == n


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(store: Store) -> None:
    rep = run_sweep(store, plan("div", etas=(1e6, 0.05), gammas=(1.0,)), WorkOptions(device="cpu"))
    assert rep.diverged == 1 and rep.completed == 1
    runs = store.runs_frame("div").sort("eta")
    assert runs["status"].to_list() == ["completed", "diverged"]
    bad = runs.row(1, named=True)
    assert bad["diverged_at"] is not None and bad["steps_done"] == bad["diverged_at"]
    loss = store.series([bad["run_id"]])["value"].to_list()
    assert not math.isfinite(loss[-1]) and len(loss) == bad["diverged_at"]


def test_adaptive_scan_stops_below_the_largest_convergent_eta(store: Store) -> None:
    etas = (1e6, 1e4, 0.3, 0.1, 0.03, 0.01, 0.003)
    p = SweepPlan(name="ad", spec={}, configs=[tiny(gamma=1.0, eta=e, steps=10) for e in etas],
                  adaptive=True, decades_below=1.0)
    rep = run_sweep(store, p, WorkOptions(device="cpu"))
    # 1e6 and 1e4 diverge, 0.3 is the largest convergent eta: the scan runs one decade below it, to
    # 0.03, and never creates 0.01 or 0.003
    ran = {r["eta"]: r["status"] for r in store.runs_frame("ad").iter_rows(named=True)}
    assert ran == {1e6: "diverged", 1e4: "diverged", 0.3: "completed", 0.1: "completed", 0.03: "completed"}
    assert (rep.total, rep.completed, rep.diverged, rep.not_needed, rep.skipped) == (7, 3, 2, 2, 0)



def _stored(store: Store, sweep: str) -> dict[tuple, tuple]:
    """(gamma, eta, seed) -> (status, diverged_at, losses) of every run of ``sweep``."""
    out = {}
    for r in store.runs_frame(sweep).iter_rows(named=True):
        losses = store.series([r["run_id"]], metrics=["loss"])["value"].to_list()
        out[(r["gamma"], r["eta"], r["seed"])] = (r["status"], r["diverged_at"], losses)
    return out


def test_adaptive_scan_with_ensembles_stacks_each_ladder_and_finds_the_same_range(sqlite_url: str, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """--ensemble with the adaptive scan: a gamma's eta ladder is trained as stacks, the largest
    convergent eta and every shared run equal the one-at-a-time scan's, and the extra levels a round
    may train lie below the scan's range."""
    import gammadb.runners.ensemble as ensemble_module

    sizes: list[int] = []
    real = ensemble_module.train_ensemble

    def spy(configs, sinks, **kw):
        sizes.append(len(configs))
        return real(configs, sinks, **kw)

    monkeypatch.setattr(ensemble_module, "train_ensemble", spy)
    etas = (1e6, 3e5, 1e5, 3e4, 1e4, 3e3, 1e3, 300, 100, 30, 10, 3, 1)
    configs = [tiny(gamma=g, eta=e, seed=s, steps=12, dtype="float64", cadence="none", ntk=False, sharpness=False)
               for g in (0.5, 2.0) for e in etas for s in (0, 1)]

    def scan(url: str, k: int) -> tuple:
        with Store.open(url) as store:
            rep = run_sweep(store, SweepPlan(name="ad", spec={}, configs=configs, adaptive=True, decades_below=1.0),
                            WorkOptions(device="cpu", ensemble=k))
            return rep, _stored(store, "ad")

    stacked_rep, stacked = scan(sqlite_url, 8)
    assert sizes and max(sizes) == 8  # 2 ladders x 2 seeds per level: two levels per ladder per round
    solo_rep, solo = scan(f"sqlite:///{tmp_path / 'solo.sqlite'}", 1)
    assert set(solo) <= set(stacked) and stacked_rep.not_needed < len(configs)
    assert stacked_rep.total == solo_rep.total == len(configs)
    for key, (status, diverged_at, losses) in solo.items():
        got = stacked[key]
        assert (got[0], got[1]) == (status, diverged_at), key
        assert len(got[2]) == len(losses)
        assert all(u == v or abs(u - v) <= 1e-10 * max(1.0, abs(v)) or (math.isnan(u) and math.isnan(v))
                   or (math.isinf(u) and math.isinf(v)) for u, v in zip(got[2], losses)), key
    for gamma in (0.5, 2.0):
        diverging = {e for (g, e, _), (st, _, _) in solo.items() if g == gamma and st == "diverged"}
        largest_convergent = replay([(e, e in diverging) for (g, e, _) in solo if g == gamma], 1.0)
        lowest_needed = largest_convergent / 10 * (1 - 1e-9)
        extra = [e for (g, e, _) in set(stacked) - set(solo) if g == gamma]
        assert all(e < lowest_needed for e in extra), (gamma, extra)
        assert {e for (g, e, _) in solo if g == gamma} == {e for e in etas if e >= lowest_needed}

# ---------------------------------------------------------------------- the authors' restart rule
SCAN_ETAS = (1e4, 1e3, 100.0, 10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def scan_spec(loss_fn: str) -> str:
    task = "teacher_cls" if loss_fn == "xent" else "teacher"
    return (f'name = "scan"\ngamma = [0.5, 2.0]\neta = {list(SCAN_ETAS)}\nseeds = 2\nsteps = 5\n'
            f'adaptive = true\ndecades_below = 2\n[base]\nmodel = "mlp"\ntask = "{task}"\nloss_fn = "{loss_fn}"\n'
            'depth = 2\nwidth = 8\nbatch_size = 4\ncadence = "none"\n')


def scan_diverges(eta: float, seed: int) -> bool:
    """The levels that end in a NaN: above 100; seed 1 at 1 (within 2 decades of the anchor 100: the
    scan restarts and re-anchors at 0.1); seed 0 at 1e-4 (below 0.1's range, unless the scan has none)."""
    return eta >= 1e3 or (eta == 1.0 and seed == 1) or (eta == 1e-4 and seed == 0)


#: Per (loss, gamma), the levels the authors' scan visits: down to 2 decades below 0.1; with
#: cross-entropy at gamma < 1 the whole grid (the restart after 1e-4 re-anchors at 1e-5).
SCAN_VISITS = {("mse", 0.5): SCAN_ETAS[:8], ("mse", 2.0): SCAN_ETAS[:8],
               ("xent", 0.5): SCAN_ETAS, ("xent", 2.0): SCAN_ETAS[:8]}


def _finish_by_rule(store: Store, run) -> RunStatus:
    status = RunStatus.DIVERGED if scan_diverges(run.eta, run.seed) else RunStatus.COMPLETED
    store.finish_run(run.id, status, steps_done=1)
    return status


def _scanned(store: Store, sweep: str = "scan") -> dict[float, set[float]]:
    out: dict[float, set[float]] = {}
    for r in store.runs(sweep=sweep):
        assert r.status in (RunStatus.COMPLETED, RunStatus.DIVERGED), r
        out.setdefault(r.gamma, set()).add(r.eta)
    return out


@pytest.mark.parametrize("loss_fn", ["mse", "xent"])
@pytest.mark.parametrize("path", ["one-process", "ensemble-rounds", "workers"])
def test_adaptive_scan_restarts_below_a_later_divergence(sqlite_url: str, monkeypatch, loss_fn: str,
                                                         path: str) -> None:
    """The authors' rule on every path: a NaN in any seed below the largest convergent eta moves the
    range below it (the scan goes on down to decades_below under the new anchor), and cross-entropy at
    gamma < 1 scans the whole grid. Training is replaced by the divergence rule, so the three paths
    see the same outcomes; the rounds may train levels below the final range, which move nothing."""
    import gammadb.runners.adaptive as adaptive
    from gammadb.runners.plan import plan_of
    from gammadb.runners.spec import spec_from_toml

    plan = plan_of(spec_from_toml(scan_spec(loss_fn)))
    monkeypatch.setattr(adaptive, "train_claimed", lambda store, run, options, reporter: _finish_by_rule(store, run))

    def drain(store, sweep_id, runs, options, reporter, started, total):
        for run in runs:  # a round's levels together, as a stack would train them
            claimed = store.claim_next(sweep_id, run_ids=[run.id])
            yield claimed, _finish_by_rule(store, claimed)

    monkeypatch.setattr(adaptive, "drain_ensembles", drain)
    with Store.open(sqlite_url) as store:
        if path == "workers":
            from gammadb.runners.plan import prepare

            prepare(store, plan)
            while adaptive.advance_adaptive(store, "scan"):
                for run in store.runs(sweep="scan"):
                    if run.status == RunStatus.PENDING:
                        _finish_by_rule(store, run)
        else:
            rep = run_sweep(store, plan, WorkOptions(device="cpu", ensemble=8 if path == "ensemble-rounds" else 1))
            assert rep.total == 2 * len(SCAN_ETAS) * 2
        scanned = _scanned(store)
    for gamma in (0.5, 2.0):
        want = set(SCAN_VISITS[(loss_fn, gamma)])
        if path == "ensemble-rounds":  # extra levels, all below the final range
            lowest = min(want)
            assert want <= scanned[gamma] and all(e < lowest for e in scanned[gamma] - want), (gamma, scanned)
        else:
            assert scanned[gamma] == want, (gamma, sorted(scanned[gamma]))


def test_adaptive_scan_restart_with_real_training(store: Store, monkeypatch) -> None:
    """Real runs: seed 1 at eta 0.1 is made to diverge (trained at eta 1e6), below the largest
    convergent 0.3; the scan restarts, anchors at 0.03 and trains down to 3e-3 (one decade), where the
    old rule stopped at 0.03."""
    import dataclasses

    import gammadb.runners.train as train_module

    real = train_module.train

    def nan_at(config, sink, **kw):
        if config.eta == 0.1 and config.seed == 1:
            config = dataclasses.replace(config, eta=1e6)
        return real(config, sink, **kw)

    monkeypatch.setattr(train_module, "train", nan_at)
    etas = (1e6, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3)
    configs = [tiny(gamma=1.0, eta=e, seed=s, steps=5, cadence="none", ntk=False, sharpness=False)
               for e in etas for s in (0, 1)]
    rep = run_sweep(store, SweepPlan(name="restart", spec={}, configs=configs, adaptive=True, decades_below=1.0),
                    WorkOptions(device="cpu"))
    ran = {(r["eta"], r["seed"]): r["status"] for r in store.runs_frame("restart").iter_rows(named=True)}
    assert {e for e, _ in ran} == {1e6, 0.3, 0.1, 0.03, 0.01, 3e-3}
    assert ran[(0.1, 1)] == "diverged" and ran[(0.1, 0)] == "completed" and ran[(1e6, 0)] == "diverged"
    assert (rep.not_needed, rep.diverged) == (2, 3)


SCRIPT = textwrap.dedent("""
    import sys
    from gammadb.store import Store
    from gammadb.runners.plan import SweepPlan, WorkOptions
    from gammadb.runners.sweep import run_sweep
    from tests.runners.test_sweep import tiny
    store = Store.open(sys.argv[1])
    p = SweepPlan(name="crash", spec={}, configs=[tiny(gamma=1.0, eta=0.05, steps=int(sys.argv[2]),
                  seed=s, cadence="none", sharpness=False, ntk=False) for s in (0, 1)])
    run_sweep(store, p, WorkOptions(device="cpu", flush_seconds=0.05, batch_rows=200,
              checkpoint_dir=sys.argv[3] if sys.argv[3] != "-" else None, checkpoint_every_steps=50,
              ensemble=int(sys.argv[4])))
""")


@pytest.mark.parametrize(("checkpoints", "ensemble"), [(False, 1), (True, 1), (True, 2)],
                         ids=["restart", "resume", "resume-ensemble"])
def test_sigkill_mid_run_leaves_whole_batches_and_the_rerun_matches_a_clean_run(
        sqlite_url: str, tmp_path: Path, checkpoints: bool, ensemble: int) -> None:
    steps = 1500
    ckpt = str(tmp_path / "ckpt") if checkpoints else "-"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(steps), ckpt, str(ensemble)]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, sqlite_url, *args], env=env, cwd=ROOT)
    store = Store.open(sqlite_url)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            n = count_values(store)
        except Exception:
            continue
        if n > 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs = store.runs_frame("crash")
    killed = runs.filter(pl.col("status") == "running")
    assert killed.height == ensemble, runs  # the two seeds are one ensemble
    run_id = killed["run_id"][0]
    # Whole batches only: every stored step has all its per-step metrics, and steps_done agrees.
    per_step = store.series([run_id], metrics=["loss", "weight_change", "feature_alignment"])
    counts = per_step.group_by("step").len()["len"].unique().to_list()
    assert counts == [5]
    assert per_step["step"].max() == killed["steps_done"][0]
    if checkpoints:
        assert list((tmp_path / "ckpt" / "crash" / str(run_id)).glob("step_*.pt"))

    subprocess.run([sys.executable, "-c", SCRIPT, sqlite_url, *args], env=env, cwd=ROOT, check=True)
    runs = store.runs_frame("crash")
    assert runs["status"].to_list() == ["completed", "completed"]
    got = store.series(runs["run_id"].to_list(), metrics=["loss"])

    ref_url = f"sqlite:///{tmp_path / 'ref.sqlite'}"
    subprocess.run([sys.executable, "-c", SCRIPT, ref_url, str(steps), "-", str(ensemble)], env=env, cwd=ROOT, check=True)
    ref = Store.open(ref_url)
    want = ref.series(ref.runs_frame("crash")["run_id"].to_list(), metrics=["loss"])
    assert got.height == want.height == 2 * steps
    assert got["value"].to_list() == want["value"].to_list()  # bit for bit on CPU


def test_ensemble_sweep_records_each_member_as_its_own_run(sqlite_url: str) -> None:
    """--ensemble K: every member is stored as its own run, equal to the same point trained alone."""
    configs = [tiny(gamma=g, eta=e, dtype="float64", cadence="none", ntk=False, sharpness=False)
               for g in (0.5, 2.0) for e in (0.05, 1e6)]
    with Store.open(sqlite_url) as store:
        fills: list[list[int]] = []
        real = store.cache_loss_buckets
        store.cache_loss_buckets = lambda ids: fills.append(sorted(ids)) or real(ids)  # type: ignore[method-assign]
        rep = run_sweep(store, SweepPlan(name="ens", spec={}, configs=configs), WorkOptions(device="cpu", ensemble=4))
        assert (rep.completed, rep.diverged) == (2, 2)
        stacked = store.runs_frame("ens").sort("gamma", "eta")
        # the members' losses are bucketed in one pass at the ensemble's end: every run with a finite
        # loss past step 0 is cached
        assert fills == [sorted(stacked["run_id"].to_list())]
        finite = store.series(stacked["run_id"].to_list(), metrics=["loss"]).filter(
            (pl.col("step") >= 1) & pl.col("value").is_finite())["run_id"].unique().to_list()
        assert loss_cached(store) == set(finite) and len(finite) >= 2
        alone_url = sqlite_url.replace("store.sqlite", "alone.sqlite")
    with Store.open(alone_url) as alone:
        run_sweep(alone, SweepPlan(name="ens", spec={}, configs=configs), WorkOptions(device="cpu"))
        solo = alone.runs_frame("ens").sort("gamma", "eta")
        assert stacked["status"].to_list() == solo["status"].to_list()
        assert stacked["diverged_at"].to_list() == solo["diverged_at"].to_list()
        with Store.open(sqlite_url) as store:
            for a, b in zip(stacked["run_id"].to_list(), solo["run_id"].to_list()):
                x = store.series([a], metrics=["loss"])["value"].to_list()
                y = alone.series([b], metrics=["loss"])["value"].to_list()
                assert len(x) == len(y)
                assert all((u == v) or abs(u - v) <= 1e-10 * max(1.0, abs(v)) or (u != u and v != v)
                           or (math.isinf(u) and math.isinf(v)) for u, v in zip(x, y))


def test_an_exception_in_training_marks_the_run_failed_and_the_sweep_goes_on(store: Store, monkeypatch) -> None:
    import gammadb.runners.train as train_module

    real = train_module.train

    def flaky(config, sink, **kw):
        if config.eta == 0.2:
            sink.log(1, {})  # something was logged before the failure
            raise RuntimeError("boom in the trainer")
        return real(config, sink, **kw)

    monkeypatch.setattr(train_module, "train", flaky)
    rep = run_sweep(store, plan("fail", gammas=(1.0,)), WorkOptions(device="cpu"))
    assert (rep.completed, rep.failed) == (1, 1)
    runs = store.runs(sweep="fail")
    bad = next(r for r in runs if r.eta == 0.2)
    assert bad.status == RunStatus.FAILED and "RuntimeError: boom in the trainer" in (bad.error or "")
    assert bad.steps_done == 1
    # Running the sweep again retries the failed run (and only it), as run_sweep's docstring promises.
    monkeypatch.undo()
    again = run_sweep(store, plan("fail", gammas=(1.0,)), WorkOptions(device="cpu"))
    assert (again.skipped, again.completed, again.failed) == (1, 1, 0)
    retried = store.get_run(bad.id)
    assert (retried.status, retried.steps_done, retried.error) == (RunStatus.COMPLETED, 25, None)
