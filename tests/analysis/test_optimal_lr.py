"""`gammadb.analysis.optimal_lr`: eta*, eta_max, eta_stable, eta_min per gamma and their power laws in gamma.

Synthetic sweeps with a known eta*(gamma) law go through `gammadb import` into a real store (SQLite
and, with GAMMADB_TEST_PG_URL, PostgreSQL) and the analysis must recover the law; small hand-made
frames pin the definitions exactly (golden tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis import optimal_lr as olr
from gammadb.analysis._common import Criterion, RunTable, load_runs, tail_start, theory_exponent, toy_eta_max
from gammadb.errors import AnalysisError, InvalidSpecError, NotFoundError
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.conftest import BACKENDS, _pg_database

GAMMAS = [10.0**k for k in (-3, -2.5, -2, -1.5, -1, 0, 1, 1.5, 2, 2.5, 3)]
TEST_STEPS = (1, 2, 5, 10, 20, 30)


# ---------------------------------------------------------------------- synthetic sweeps
def law(gamma: float, depth: int = 3) -> float:
    """The known eta*(gamma): slope 2 below the knee at gamma = 1, slope 2/L above."""
    return 0.5 * gamma**2 / (1 + gamma) ** (2 * (depth - 1) / depth)


def synth(gammas: Sequence[float] = GAMMAS, seeds: Sequence[int] = (0, 1, 2), steps: int = 30,
          per_decade: int = 4, span: tuple[float, float] = (-1.25, 0.75), depth: int | None = 3,
          with_test: bool = False, noise: float = 0.02) -> pl.DataFrame:
    """Loss curves whose loss at the budget is lowest at eta = law(gamma) (per seed a 2% jitter of
    it), ~1% of the initial loss near it, on the plateau 2.5 decades below it, and diverged (inf from
    mid-run) above 4x it. Etas on a global grid of ``per_decade`` per decade over ``span`` decades
    around it."""
    frames = []
    t = np.arange(steps + 1, dtype=float)
    for g in gammas:
        es = law(g, depth or 3)
        lo = math.floor((math.log10(es) + span[0]) * per_decade)
        hi = math.ceil((math.log10(es) + span[1]) * per_decade)
        for j in range(lo, hi + 1):
            eta = 10 ** (j / per_decade)
            for s in seeds:
                es_s = es * 10 ** (0.01 * (s - 1))
                d = math.log10(eta / es_s)
                q = 0.01 * (1 + 4 * d * d)
                loss = q + (1 - q) * np.exp(-t * 50.0 / steps * eta / es_s)
                rng = np.random.default_rng([j + 1000, s, int(round(100 * math.log10(g))) + 1000])
                loss = loss * (1 + noise * rng.normal(size=t.size))
                loss[0] = 1.0
                if eta > 4 * es_s:
                    loss[steps // 2:] = np.inf
                cols = {"gamma": g, "eta": eta, "seed": s, "step": t.astype(int), "loss": loss}
                if with_test:
                    cols["test_loss"] = np.where(np.isin(t, TEST_STEPS), 1.1 * loss, np.nan)
                frames.append(pl.DataFrame(cols))
    df = pl.concat(frames)
    if with_test:  # NaN here means "not evaluated at this step": an empty cell for import
        df = df.with_columns(pl.when(pl.col("test_loss").is_nan()).then(None).otherwise(pl.col("test_loss"))
                             .alias("test_loss"))
    if depth is not None:
        df = df.with_columns(pl.lit(depth).alias("depth"), pl.lit("mlp").alias("model"))
    return df


def toy_sweep(depths: Sequence[int] = (2, 3, 4), gammas: Sequence[float] | None = None, per_decade: int = 4,
              steps: int = 1000, log_every: int = 50) -> pl.DataFrame:
    """Full-batch GD on the width-1 depth-L linear toy (docs/theory.md): f = (w^L - 1)/gamma, loss
    0.5 (f - 1)^2, balanced init w_l = 1 (so every layer stays equal), lr = eta. Etas on a grid of
    ``per_decade`` per decade from 2 decades below to 1 above the closed-form 2/lambda*. A run stops
    at its first non-finite (or > 1e12) loss, logged as inf, as a runner does."""
    gammas = gammas if gammas is not None else [10 ** (k / 2) for k in range(-6, 7)]
    frames = []
    for L in depths:
        for g in gammas:
            c = math.log10(float(toy_eta_max(g, L)))
            js = np.arange(math.floor((c - 2) * per_decade), math.ceil((c + 1) * per_decade) + 1)
            etas = 10.0 ** (js / per_decade)
            w = np.ones_like(etas)
            alive = np.ones(etas.size, bool)
            steps_log, values, masks = [], [], []
            for t in range(steps + 1):
                with np.errstate(all="ignore"):
                    f = (w**L - 1) / g
                    loss = 0.5 * (f - 1) ** 2
                bad = alive & ~(np.isfinite(loss) & (loss < 1e12))
                if t % log_every == 0 or bad.any():
                    steps_log.append(t)
                    values.append(np.where(bad, np.inf, loss))
                    masks.append(alive.copy())
                alive &= ~bad
                with np.errstate(all="ignore"):
                    w = np.where(alive, w - etas * (f - 1) * w ** (L - 1) / g, w)
            st, va, ma = np.array(steps_log), np.array(values), np.array(masks)
            for i, eta in enumerate(etas):
                keep = ma[:, i]
                frames.append(pl.DataFrame({"gamma": g, "eta": float(eta), "seed": 0, "step": st[keep],
                                            "loss": va[keep, i], "depth": L, "model": "toy"}))
    return pl.concat(frames)


def reference_table(df: pl.DataFrame, budget: int) -> RunTable:
    """The per-run table computed straight from a long (run, step) frame in polars: the reference
    the store's SQL aggregation must match."""
    keys = ["gamma", "eta", "seed"]
    first = df.group_by(keys).agg(pl.col("step").min().alias("first_step"))
    d = df.join(first, on=keys)
    tail_from = pl.lit(budget) - ((pl.lit(budget) - pl.col("first_step") + 1) * 0.1).ceil().cast(pl.Int64)
    per_run = d.sort("step").group_by(keys).agg(
        (~pl.col("loss").is_finite()).any().alias("diverged"),
        pl.col("loss").first().alias("initial_loss"),
        pl.col("first_step").first(),
        pl.col("step").filter(pl.col("step") <= budget).max().alias("last_step"),
        pl.col("loss").filter(pl.col("step") <= budget).last().alias("final_loss"),
        pl.col("loss").filter((pl.col("step") > tail_from) & (pl.col("step") <= budget)).mean().alias("tail_mean_loss"),
        pl.col("loss").filter(pl.col("step") <= budget).min().alias("min_loss"),
        pl.col("loss").filter(pl.col("step") <= budget).max().alias("max_loss"),
    )
    per_run = per_run.with_columns(
        *(pl.when(pl.col("diverged")).then(None).otherwise(pl.col(c)).alias(c)
          for c in ("last_step", "final_loss", "tail_mean_loss", "min_loss", "max_loss")),
        *(pl.lit(v).alias(c) for c, v in (("model", "mlp"), ("dataset", "unknown"), ("loss_fn", "mse"),
                                           ("optimizer", "sgd"))),
        pl.lit(3, pl.Int64).alias("depth"), pl.lit(None, pl.Int64).alias("width"),
        pl.lit(None, pl.Int64).alias("batch_size"),
    ).sort(keys).with_row_index("run_id", offset=1).with_columns(pl.col("run_id").cast(pl.Int64))
    return RunTable(per_run, budget, "reference")


@pytest.fixture(scope="session", params=BACKENDS)
def synth_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend holding the known-law sweep 'law' (with a test-loss series), shared by
    the read-only tests (the CLI tests import this fixture too)."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('lr') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    url = next(urls)
    store = Store.open(url)
    import_frame(store, synth(with_test=True), "law")
    try:
        yield store
    finally:
        store.close()
        next(urls, None)  # drops the PostgreSQL database


EDGE_SWEEPS = {
    "one-seed": lambda: synth(seeds=(0,), gammas=GAMMAS[:5]),
    "one-gamma": lambda: synth(gammas=[1.0], seeds=(0, 1)),
    "two-small": lambda: synth(gammas=[1e-3, 1e-2, 1.0, 10.0, 100.0, 1000.0], seeds=(0,)),
    "boom": lambda: synth(gammas=[1.0, 10.0], seeds=(0,), span=(2.0, 3.0)),  # every eta far above 4 eta*
    "depths": lambda: pl.concat([synth(gammas=GAMMAS[:4], depth=2, seeds=(0,)),
                                 synth(gammas=GAMMAS[:4], depth=4, seeds=(0,))]),
}


@pytest.fixture(scope="session", params=BACKENDS)
def edge_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend with small sweeps that probe the edge cases (read-only tests)."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('edge') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    store = Store.open(next(urls))
    for name, make in EDGE_SWEEPS.items():
        import_frame(store, make(), name)
    try:
        yield store
    finally:
        store.close()
        next(urls, None)


# ---------------------------------------------------------------------- recovering the law
def test_recovers_known_law(synth_store: Store) -> None:
    res = olr.analyze(synth_store, "law", settings=olr.Settings(n_boot=300))
    assert res.budget_step == 30 and res.source == "summaries"
    pts = res.points
    truth = np.array([law(g) for g in pts["gamma"]])
    # eta* within 15% of the law at every gamma (the grid is 78% wide per step: the parabola refines it)
    np.testing.assert_allclose(pts["eta_star"].to_numpy(), truth, rtol=0.15)
    # eta_max: the last grid eta below the divergence at 4 eta*, so 4 eta* / 1.78 < eta_max < 4 eta*
    ratio = pts["eta_max"].to_numpy() / truth
    assert np.all((ratio > 4 / 10**0.25 * 0.97) & (ratio < 4.0 * 1.03))
    assert pts["eta_stable"].to_list() == pts["eta_max"].to_list()
    assert pts["eta_conv"].to_list() == pts["eta_max"].to_list()  # no divergence below a convergent eta
    assert pts["n_seeds"].to_list() == [3] * len(GAMMAS)
    assert pts["eta_star_lo"].is_not_null().all() and (pts["eta_star_lo"] <= pts["eta_star_hi"]).all()

    fits = {(r["target"], r["regime"]): r for r in res.fits.iter_rows(named=True)}
    small, large = fits["eta_star", "small_gamma"], fits["eta_star", "large_gamma"]
    # the law's local slope is 2 - (4/3) g/(1+g): 1.88..2.0 on [1e-3, 0.1] and 0.67..0.79 on [10, 1e3]
    assert small["exponent"] == pytest.approx(1.97, abs=0.05) and small["theory_exponent"] == 2.0
    assert large["exponent"] == pytest.approx(0.70, abs=0.05) and large["theory_exponent"] == pytest.approx(2 / 3)
    assert small["exponent_lo"] <= small["exponent"] <= small["exponent_hi"]
    assert (small["gamma_lo"], small["gamma_hi"], small["n_points"]) == (1e-3, 0.1, 5)
    for target in ("eta_max", "eta_conv"):
        assert fits[target, "small_gamma"]["exponent"] == pytest.approx(2.0, abs=0.15)
        assert fits[target, "large_gamma"]["exponent"] == pytest.approx(2 / 3, abs=0.15)
    bpl = res.broken.row(0, named=True)
    assert bpl["slope_small"] == pytest.approx(2.0, abs=0.1)
    assert bpl["slope_large"] == pytest.approx(2 / 3, abs=0.1)
    assert 0.3 < bpl["knee_gamma"] < 3.0 and bpl["reason"] is None


def test_summaries_and_sql_paths_agree(synth_store: Store) -> None:
    fast = load_runs(synth_store, "law")
    slow = load_runs(synth_store, "law", force_sql=True)
    assert (fast.source, slow.source) == ("summaries", "sql")
    cols = ["run_id", "diverged", "last_step", "final_loss", "tail_mean_loss", "initial_loss"]
    assert_frame_equal(fast.frame.select(cols), slow.frame.select(cols), check_exact=False, rel_tol=1e-12)
    a = olr.analyze_runs(fast, "law", olr.Settings(n_boot=50))
    b = olr.analyze_runs(slow, "law", olr.Settings(n_boot=50))
    assert_frame_equal(a.points, b.points, check_exact=False, rel_tol=1e-12)


def test_the_largest_loss_comes_from_the_summaries_and_agrees_with_sql(synth_store: Store) -> None:
    """The phase map's max_loss: from run_summaries.max_loss (migration 0006) where every summary has
    one, the same numbers as the pass over the steps; a summary without it (written before 0006)
    sends the whole table back to the SQL path."""
    fast = load_runs(synth_store, "law", want_max=True)
    slow = load_runs(synth_store, "law", want_max=True, force_sql=True)
    assert (fast.source, slow.source) == ("summaries", "sql")
    cols = ["run_id", "diverged", "final_loss", "max_loss"]
    assert fast.frame["max_loss"].drop_nulls().len() > 0
    assert_frame_equal(fast.frame.select(cols), slow.frame.select(cols), check_exact=False, rel_tol=1e-12)
    one = int(fast.frame.filter(~pl.col("diverged"))["run_id"][0])
    kept = synth_store.summaries([one])[one].max_loss
    assert kept is not None
    try:  # the store is shared by the session's read-only tests: put the value back
        with synth_store.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE run_summaries SET max_loss = NULL WHERE run_id = {one}")
        old = load_runs(synth_store, "law", want_max=True)
        assert old.source == "sql"
        assert_frame_equal(old.frame.select(cols), slow.frame.select(cols), check_exact=False, rel_tol=1e-12)
    finally:
        with synth_store.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE run_summaries SET max_loss = {kept!r} WHERE run_id = {one}")


@pytest.mark.parametrize("criterion", list(Criterion), ids=[c.value for c in Criterion])
def test_every_criterion_finds_the_law(synth_store: Store, criterion: Criterion) -> None:
    res = olr.analyze(synth_store, "law", budget=20, settings=olr.Settings(criterion=criterion, n_boot=50))
    assert res.budget_step == 20 and res.source == "sql"
    got = res.points["eta_star"].to_numpy()
    truth = np.array([law(g) for g in res.points["gamma"]])
    # the single-step criteria see the 2% per-step noise, the test loss a coarser grid: looser
    np.testing.assert_allclose(got, truth, rtol=0.35)
    small = res.fits.filter((pl.col("target") == "eta_star") & (pl.col("regime") == "small_gamma"))
    assert small["exponent"][0] == pytest.approx(2.0, abs=0.15)


def test_sql_aggregates_match_a_polars_reference(synth_store: Store) -> None:
    ref = reference_table(synth(with_test=True), 17)
    got = load_runs(synth_store, "law", budget=17, want_min=True, want_max=True)
    cols = ["gamma", "eta", "seed", "diverged", "first_step", "last_step", "initial_loss", "final_loss",
            "tail_mean_loss", "min_loss", "max_loss"]
    assert_frame_equal(got.frame.select(cols).sort("gamma", "eta", "seed"), ref.frame.select(cols),
                       check_exact=False, rel_tol=1e-12, check_dtypes=False)
    a = olr.analyze_runs(got, "law", olr.Settings(n_boot=50))
    b = olr.analyze_runs(ref, "law", olr.Settings(n_boot=50))
    assert_frame_equal(a.points.drop("group_idx"), b.points.drop("group_idx"), check_exact=False, rel_tol=1e-12)


def test_budget_changes_the_aggregates_exactly(store: Store) -> None:
    # loss = 100 - step on steps 0..40 for one run; a second run logs from step 1 every 2 steps
    a = pl.DataFrame({"gamma": 1.0, "eta": 0.1, "seed": 0, "step": list(range(41)),
                      "loss": [100.0 - s for s in range(41)]})
    b = pl.DataFrame({"gamma": 1.0, "eta": 0.2, "seed": 0, "step": list(range(1, 42, 2)),
                      "loss": [200.0 - s for s in range(1, 42, 2)]})
    import_frame(store, pl.concat([a, b]), "exact")
    t = load_runs(store, "exact", budget=20, want_min=True, want_max=True)
    rows = {r["eta"]: r for r in t.frame.iter_rows(named=True)}
    # run a: steps 0..20, n = 21, tail = last ceil(2.1) = 3 steps (18, 19, 20)
    assert tail_start(20, 0) == 17
    assert rows[0.1]["tail_mean_loss"] == pytest.approx(81.0)
    assert (rows[0.1]["final_loss"], rows[0.1]["last_step"], rows[0.1]["min_loss"], rows[0.1]["max_loss"]) == (
        80.0, 20, 80.0, 100.0)
    # run b: first step 1, tail window steps > 20 - ceil(2.0) = 18: logged 19 only; last step <= 20 is 19
    assert rows[0.2]["tail_mean_loss"] == pytest.approx(181.0)
    assert (rows[0.2]["final_loss"], rows[0.2]["last_step"], rows[0.2]["initial_loss"]) == (181.0, 19, 199.0)
    assert t.budget_step == 20 and t.source == "sql"
    assert load_runs(store, "exact").budget_step == 40  # run a stopped at 40, run b at 41


# ---------------------------------------------------------------------- golden small frames
def _runs_frame(rows: list[dict]) -> pl.DataFrame:
    base = {"model": "mlp", "dataset": "teacher", "loss_fn": "mse", "optimizer": "sgd", "depth": 3, "width": 64,
            "batch_size": 32}
    df = pl.DataFrame([{"run_id": i + 1, **base, **r} for i, r in enumerate(rows)])
    return df.with_columns(pl.col("initial_loss").cast(pl.Float64), pl.col("tail_mean_loss").cast(pl.Float64),
                           pl.col("final_loss").cast(pl.Float64))


def _row(eta: float, seed: int, tail: float | None, *, gamma: float = 1.0, diverged: bool = False) -> dict:
    return {"gamma": gamma, "eta": eta, "seed": seed, "diverged": diverged, "initial_loss": 1.0,
            "tail_mean_loss": None if diverged else tail, "final_loss": None if diverged else tail}


def test_golden_points() -> None:
    runs = _runs_frame([
        _row(0.01, 0, 0.3), _row(0.01, 1, 0.5),      # mean 0.4
        _row(0.1, 0, 0.04), _row(0.1, 1, 0.06),     # mean 0.05: the best grid point
        _row(1.0, 0, 0.1), _row(1.0, 1, 0.1),       # mean 0.1
        _row(10.0, 0, None, diverged=True), _row(10.0, 1, 0.1),
    ])
    res = olr.analyze_runs(RunTable(runs, 50, "sql"), "golden", olr.Settings(converged=0.2, n_boot=200))
    # parabola in (log10 eta, ln loss) through (-2, ln .4), (-1, ln .05), (0, ln .1):
    # vertex = -1 - (1/2)(ln .1 - ln .4)/(ln .4 - 2 ln .05 + ln .1) = -1 - (1/2)(-2 ln 2)/(4 ln 2) = -0.75
    want = pl.DataFrame({
        "gamma": [1.0], "eta_star": [10**-0.75], "eta_max": [1.0], "eta_stable": [1.0], "eta_min": [0.01],
        "loss_at_eta_star": [0.05], "n_seeds": [2], "n_etas": [4], "eta_star_censored": [False],
        "eta_max_censored": [False],
        "reason": ["the smallest eta tried (0.01) left the plateau: eta_min is an upper bound"],
    })
    assert_frame_equal(res.points.select(want.columns), want, check_exact=False, rel_tol=1e-12)
    lo, hi = res.points["eta_star_lo"][0], res.points["eta_star_hi"][0]
    assert 0.01 < lo < res.points["eta_star"][0] < hi < 1.0  # the interval holds eta* and has width
    cells = res.cells.select("eta", "value", "loss_ratio", "diverged", "n_seeds", "n_diverged")
    assert_frame_equal(cells, pl.DataFrame({
        "eta": [0.01, 0.1, 1.0, 10.0], "value": [0.4, 0.05, 0.1, None], "loss_ratio": [0.4, 0.05, 0.1, None],
        "diverged": [False, False, False, True], "n_seeds": [2, 2, 2, 2], "n_diverged": [0, 0, 0, 1],
    }), check_exact=False, rel_tol=1e-12)


def test_golden_edges_and_reasons() -> None:
    runs = _runs_frame([
        # gamma 1: the best eta is the largest tried, which also trained: both are bounds
        _row(0.1, 0, 0.5), _row(1.0, 0, 0.05),
        # gamma 2: every eta diverged
        _row(0.1, 0, None, gamma=2.0, diverged=True), _row(1.0, 0, None, gamma=2.0, diverged=True),
        # gamma 3: nothing converged, the best eta sits next to a diverged one (no parabola)
        _row(0.1, 0, 0.95, gamma=3.0), _row(1.0, 0, 0.5, gamma=3.0), _row(10.0, 0, None, gamma=3.0, diverged=True),
    ])
    res = olr.analyze_runs(RunTable(runs, 50, "sql"), "edges", olr.Settings(n_boot=20))
    got = res.points.select("gamma", "eta_star", "eta_max", "eta_stable", "eta_min", "eta_star_censored",
                            "eta_max_censored", "eta_star_lo", "reason")
    want = pl.DataFrame({
        "gamma": [1.0, 2.0, 3.0], "eta_star": [1.0, None, 1.0], "eta_max": [1.0, None, None],
        "eta_stable": [1.0, None, 1.0], "eta_min": [0.1, None, 1.0], "eta_star_censored": [True, False, False],
        "eta_max_censored": [True, False, False], "eta_star_lo": [None, None, None],
        "reason": [
            "eta* is the largest eta tried (1): a bound, left out of the fits; the largest eta tried (1) trained: "
            "eta_max is a lower bound, left out of the fits; the smallest eta tried (0.1) left the plateau: eta_min "
            "is an upper bound; 1 seed: no bootstrap interval on eta*",
            "every eta diverged at this gamma; 1 seed: no bootstrap interval on eta*",
            "no eta reached loss <= 0.1 x initial by the budget; 1 seed: no bootstrap interval on eta*",
        ],
    }, schema_overrides={"eta_star_lo": pl.Float64})
    assert_frame_equal(got, want)


def test_refine_argmin_cases() -> None:
    x = np.log10([0.01, 0.1, 1.0, 10.0])
    v = np.array([
        [4.0, 1.0, 4.0, 9.0],              # symmetric around the grid point: vertex on it
        [1.0, 2.0, 3.0, 4.0],              # best at the bottom edge
        [9.0, 4.0, 1.0, np.inf],           # next to a diverged eta: the grid point
        [np.inf, np.inf, np.inf, np.inf],  # nothing trained
        [np.nan, 5.0, 1.0, 2.0],           # missing cells are skipped
    ])
    est, idx, edge = olr.refine_argmin(x, v)
    np.testing.assert_allclose(est[:3], [-1.0, -2.0, 0.0])
    assert math.isnan(est[3]) and idx.tolist() == [1, 0, 2, -1, 2]
    assert edge.tolist() == [False, True, False, False, False]
    # row 4: the parabola through (-1, ln 5), (0, 0), (1, ln 2) leans towards the lower neighbour:
    # vertex = 0 - (1/2)(ln 2 - ln 5)/(ln 5 - 0 + ln 2)
    assert est[4] == pytest.approx(0.5 * (math.log(5) - math.log(2)) / math.log(10))


@pytest.mark.parametrize(("target", "regime", "group", "want"), [
    ("eta_star", "small_gamma", {"loss_fn": "mse", "optimizer": "sgd", "depth": 3, "model": "mlp"}, 2.0),
    ("eta_max", "large_gamma", {"loss_fn": "mse", "optimizer": "sgd", "depth": 4, "model": "toy"}, 0.5),
    ("eta_max", "large_gamma", {"loss_fn": "mse", "optimizer": "sgd", "depth": 2, "model": "resnet"}, None),
    ("eta_max", "large_gamma", {"loss_fn": "mse", "optimizer": "sgd", "depth": None, "model": "unknown"}, None),
    ("eta_max", "small_gamma", {"loss_fn": "xent", "optimizer": "sgd", "depth": 3, "model": "mlp"}, 1.0),
    ("eta_star", "small_gamma", {"loss_fn": "xent", "optimizer": "sgd", "depth": 3, "model": "mlp"}, None),
    ("eta_star", "small_gamma", {"loss_fn": "mse", "optimizer": "adam", "depth": 3, "model": "mlp"}, None),
], ids=["mse-small", "toy-L4-large", "resnet-no-L", "no-depth", "xent-eta-max", "xent-eta-star", "adam"])
def test_theory_exponents(target: str, regime: str, group: dict, want: float | None) -> None:
    assert theory_exponent(target, regime, group) == want


# ---------------------------------------------------------------------- the toy model (acceptance)
def test_toy_model_eta_max_follows_theory(sqlite_url: str) -> None:
    """Deep linear toy, L = 2, 3, 4, gamma 1e-3..1e3, 4 etas per decade: eta_max slopes within 0.15
    of 2 (small gamma) and 2/L (large gamma), and eta_max within a factor 2 of 2/lambda*."""
    store = Store.open(sqlite_url)
    import_frame(store, toy_sweep(), "toy")
    res = olr.analyze(store, "toy", settings=olr.Settings(n_boot=100))
    assert res.groups["depth"].to_list() == [2, 3, 4]
    for g in res.groups.iter_rows(named=True):
        L = g["depth"]
        f = res.fits.filter((pl.col("group_idx") == g["group_idx"]) & (pl.col("target") == "eta_max"))
        by = {r["regime"]: r for r in f.iter_rows(named=True)}
        assert by["small_gamma"]["exponent"] == pytest.approx(2.0, abs=0.15), L
        assert by["large_gamma"]["exponent"] == pytest.approx(2 / L, abs=0.15), L
        assert by["large_gamma"]["theory_exponent"] == pytest.approx(2 / L)
        p = res.points.filter(pl.col("group_idx") == g["group_idx"])
        ratio = p["eta_max"].to_numpy() / toy_eta_max(p["gamma"].to_numpy(), L)
        assert np.all((ratio > 0.5) & (ratio < 2.0)), (L, ratio)
    store.close()


# ---------------------------------------------------------------------- edge cases
def test_single_seed_gives_null_interval_with_reason(edge_store: Store) -> None:
    res = olr.analyze(edge_store, "one-seed", settings=olr.Settings(n_boot=50))
    assert res.points["eta_star_lo"].is_null().all()
    assert all("1 seed: no bootstrap interval" in r for r in res.points["reason"])
    doc = res.to_json()
    assert all(p["eta_star_ci"] is None for p in doc["groups"][0]["points"])
    # the exponent still gets an interval: from resampling the gamma points
    small = [f for f in doc["groups"][0]["fits"] if f["target"] == "eta_star" and f["regime"] == "small_gamma"][0]
    assert small["exponent_ci"] is not None and small["exponent"] == pytest.approx(2.0, abs=0.1)


def test_single_gamma_reports_null_fits_with_reasons(edge_store: Store) -> None:
    res = olr.analyze(edge_store, "one-gamma", settings=olr.Settings(n_boot=50))
    assert res.points.height == 1 and res.points["eta_star"][0] == pytest.approx(law(1.0), rel=0.15)
    assert res.fits["exponent"].is_null().all()
    reasons = res.fits["reason"].to_list()
    assert reasons[0] == ("0 distinct x value(s) with a usable eta_star (need >= 3) in gamma <= 0.1; to fill it: "
                          "--gamma 1e-3:1e0:7 --eta 1e-8:1e1:37 --seeds 3 --steps 30")
    assert all(r is not None and "need >= 3" in r for r in reasons)
    bpl = res.to_json()["groups"][0]["broken_power_law"]
    assert bpl["slope_small"] is None and bpl["reason"] == "1 distinct gamma value(s) (a broken power law needs >= 5)"


def test_two_gammas_in_a_regime_is_not_a_fit(edge_store: Store) -> None:
    res = olr.analyze(edge_store, "two-small", settings=olr.Settings(n_boot=50))
    row = res.fits.filter((pl.col("target") == "eta_star") & (pl.col("regime") == "small_gamma")).row(0, named=True)
    assert row["exponent"] is None and row["exponent_lo"] is None and row["prefactor"] is None
    assert row["reason"] == ("2 distinct x value(s) with a usable eta_star (need >= 3) in gamma <= 0.1; to fill it: "
                             "--gamma 1e-3:1e3:13 --eta 1e-8:1e3:45 --seeds 3 --steps 30")
    assert row["n_points"] == 2 and (row["gamma_lo"], row["gamma_hi"]) == (1e-3, 1e-2)
    large = res.fits.filter((pl.col("target") == "eta_star") & (pl.col("regime") == "large_gamma")).row(0, named=True)
    # gamma 10, 100, 1000: the law's local slope 2 - (4/3) g/(1+g) runs from 0.79 to 0.67 there
    assert large["exponent"] == pytest.approx(0.70, abs=0.05) and large["n_points"] == 3
    assert (large["gamma_lo"], large["gamma_hi"]) == (10.0, 1000.0)


def test_all_diverged_is_a_clear_error(edge_store: Store) -> None:
    with pytest.raises(AnalysisError, match=r"every run of sweep 'boom' diverged \(12 runs\)"):
        olr.analyze(edge_store, "boom")


def test_missing_budget_step_is_a_clear_error(edge_store: Store) -> None:
    with pytest.raises(AnalysisError, match=r"budget step 500 was not reached by 16 non-diverged run\(s\) "
                                            r"\(run \d+ stopped at step 30\); use --budget 30 or less"):
        olr.analyze(edge_store, "one-gamma", budget=500)
    with pytest.raises(AnalysisError, match="not after the first logged step"):
        olr.analyze(edge_store, "one-gamma", budget=0)


def test_unknown_sweep_and_missing_test_loss(edge_store: Store) -> None:
    with pytest.raises(NotFoundError, match="no sweep named 'nope'"):
        olr.analyze(edge_store, "nope")
    with pytest.raises(AnalysisError, match="no test-loss series"):
        olr.analyze(edge_store, "one-gamma", settings=olr.Settings(criterion=Criterion.test))


@pytest.mark.parametrize("kwargs", [
    {"converged": 0.0}, {"threshold": 1.5}, {"converged": 0.5, "threshold": 0.4},
    {"small_max": 20.0, "large_min": 10.0}, {"n_boot": 3},
], ids=["converged-0", "threshold-1.5", "converged-above-threshold", "small-above-large", "few-boots"])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidSpecError):
        olr.Settings(**kwargs).check()


def test_unfinished_runs_are_left_out(store: Store) -> None:
    from gammadb.records import RunStatus

    import_frame(store, synth(gammas=[1.0], seeds=(0,)), "partial")
    run_id = int(store.runs_frame("partial")["run_id"][0])
    store.mark_running(run_id)  # rerun, then interrupted: back to pending, not a result yet
    store.reset_runs([run_id])
    t = load_runs(store, "partial")
    assert run_id not in t.frame["run_id"].to_list()
    assert store.get_run(run_id).status == RunStatus.PENDING


def test_groups_are_analysed_separately(edge_store: Store) -> None:
    res = olr.analyze(edge_store, "depths", settings=olr.Settings(n_boot=50))
    doc = res.to_json()
    assert [g["group"]["depth"] for g in doc["groups"]] == [2, 4]
    for g in doc["groups"]:
        L = g["group"]["depth"]
        etas = [p["eta_star"] for p in g["points"]]
        np.testing.assert_allclose(etas, [law(p["gamma"], L) for p in g["points"]], rtol=0.15)


def test_json_shape_is_exact(synth_store: Store) -> None:
    doc = olr.analyze(synth_store, "law", settings=olr.Settings(n_boot=50)).to_json()
    assert set(doc) == {"sweep", "budget_step", "criterion", "criterion_meaning", "scan_decades_below", "groups"}
    assert (doc["sweep"], doc["budget_step"], doc["criterion"]) == ("law", 30, "tail-mean")
    assert doc["criterion_meaning"] == "the mean training loss over the last 10% of the steps up to the budget"
    assert doc["scan_decades_below"] == 3.0  # an imported sweep: the authors' window
    g = doc["groups"][0]
    assert set(g) == {"group", "points", "fits", "broken_power_law"}
    assert set(g["group"]) == {"model", "dataset", "loss_fn", "optimizer", "depth", "width", "batch_size"}
    assert set(g["points"][0]) == {"gamma", "eta_star", "eta_star_ci", "eta_max", "eta_stable", "eta_conv",
                                   "eta_min", "loss_at_eta_star", "n_seeds", "reason"}
    assert set(g["fits"][0]) == {"target", "regime", "gamma_range", "exponent", "exponent_ci", "prefactor",
                                 "theory_exponent", "n_points", "reason"}
    assert [(f["target"], f["regime"]) for f in g["fits"]] == [
        ("eta_star", "small_gamma"), ("eta_star", "large_gamma"), ("eta_max", "small_gamma"),
        ("eta_max", "large_gamma"), ("eta_conv", "small_gamma"), ("eta_conv", "large_gamma")]
    assert set(g["broken_power_law"]) == {"target", "slope_small", "slope_large", "knee_gamma", "reason"}
    assert isinstance(g["points"][0]["eta_star_ci"], list) and len(g["points"][0]["eta_star_ci"]) == 2


def test_report_tables_name_each_group(synth_store: Store, tmp_path: Path) -> None:
    res = olr.analyze(synth_store, "law", settings=olr.Settings(n_boot=20))
    titles = [t for t, _ in olr.report_tables(res)]
    assert len(titles) == 3 and "model=mlp" in titles[0] and "depth=3" in titles[0]


def test_a_group_where_everything_diverged_is_reported_not_fatal() -> None:
    ok = reference_table(synth(gammas=GAMMAS[:6], seeds=(0, 1)), 30).frame
    bad = reference_table(synth(gammas=GAMMAS[:3], seeds=(0,), span=(2.0, 3.0)), 30).frame
    runs = pl.concat([ok, bad.with_columns(pl.lit(5, pl.Int64).alias("depth"),
                                           (pl.col("run_id") + 10_000).alias("run_id"))])
    res = olr.analyze_runs(RunTable(runs, 30, "reference"), "mixed", olr.Settings(n_boot=20))
    doc = res.to_json()
    assert [g["group"]["depth"] for g in doc["groups"]] == [3, 5]
    dead = doc["groups"][1]
    assert all(p["eta_star"] is None and p["eta_max"] is None and p["eta_stable"] is None for p in dead["points"])
    assert all(p["reason"].startswith("every eta diverged at this gamma") for p in dead["points"])
    assert all(f["exponent"] is None for f in dead["fits"])
    from gammadb.analysis.charts_lr import optimal_lr_chart

    spec = optimal_lr_chart(res).to_dict()  # the empty group still draws: all its cells dark
    assert len(spec["vconcat"]) == 2


def test_initial_loss_is_the_test_loss_at_the_first_step_when_measured(store: Store) -> None:
    """One minibatch's loss at step 1 is a noisy reference for "trained" (loss <= 0.1 x initial); the
    held-out test loss at that step is not. Here step 1's batch loss is 0.5 while the plateau is 1.0."""
    rows = []
    for eta in (0.01, 0.1, 1.0):
        for step in range(1, 101):
            loss = 0.5 if step == 1 else (1.0 if eta < 0.1 or step < 50 else 0.08 if eta == 0.1 else 0.2)
            rows.append(dict(gamma=1.0, eta=eta, seed=0, step=step, loss=loss,
                             test_loss=1.0 if step == 1 else None))
    import_frame(store, pl.DataFrame(rows), "noisy")
    table = load_runs(store, "noisy")
    assert table.frame["initial_loss"].to_list() == [1.0, 1.0, 1.0]
    points = olr.analyze(store, "noisy").points
    # eta = 0.1 ends at 0.08 <= 0.1 x 1.0 (trained); against the batch loss 0.5 it would not count
    assert points["eta_max"].to_list() == [0.1]


def _multi_output_sweep(store: Store, name: str, test_reduction: str) -> None:
    """MSE runs on a 10-output teacher whose training loss (the mean over outputs) starts on a plateau
    at 1.0, as the previous test; the test loss logs 1.0 per output at step 1, summed or averaged
    over the outputs as ``test_reduction`` says, and 0.08 per output at the last step."""
    from gammadb.metrics import LOSS, TEST_LOSS, MetricKey
    from gammadb.runners.config import RunConfig
    from gammadb.runners.plan import run_spec
    from gammadb.records import RunStatus

    configs = [RunConfig(task="teacher", out_dim=10, eta=eta, steps=100, test_reduction=test_reduction)
               for eta in (0.01, 0.1, 1.0)]
    scale = configs[0].test_loss_scale
    assert scale == (10.0 if test_reduction == "sum" else 1.0)
    sweep = store.ensure_sweep(name, {})
    runs = store.ensure_runs(sweep.id, [run_spec(c) for c in configs])
    with store.writer(background=False) as w:
        for run, c in zip(runs, configs):
            for step in range(1, 101):
                loss = 0.5 if step == 1 else (1.0 if c.eta < 0.1 or step < 50 else 0.08 if c.eta == 0.1 else 0.2)
                values = {MetricKey(LOSS): loss}
                if step in (1, 100):
                    values[MetricKey(TEST_LOSS)] = scale * (1.0 if step == 1 else loss)
                w.log(run.id, step, values)
    for run in runs:
        store.finish_run(run.id, RunStatus.COMPLETED, steps_done=100)


@pytest.mark.parametrize("test_reduction", ["sum", "mean"])
def test_initial_loss_is_on_the_training_scale_for_a_summed_test_loss(store: Store, test_reduction: str) -> None:
    """With the authors' test loss (summed over the C = 10 outputs) the first test loss is 10x the
    training loss's scale: the reference for "trained" divides it by C, so eta_max is the same whichever
    way the test loss was reduced (against 10.0, the plateau itself would count as trained: eta_max 1.0)."""
    _multi_output_sweep(store, "c10", test_reduction)
    table = load_runs(store, "c10", want_test=True)
    assert table.frame["initial_loss"].to_list() == [1.0, 1.0, 1.0]
    assert table.frame["test_loss"].to_list() == pytest.approx([1.0, 0.08, 0.2])
    assert olr.analyze(store, "c10").points["eta_max"].to_list() == [0.1]


@pytest.mark.parametrize(("config", "want"), [
    ({"task": "teacher", "out_dim": 10}, 10.0),  # test_reduction absent: the default, 'sum'
    ('{"task": "mnist5k", "loss_fn": "mse"}', 10.0),  # JSON text, the task's default outputs
    ({"task": "mnist5k", "test_reduction": "mean"}, 1.0),
    ({"task": "mnist5k", "loss_fn": "xent"}, 1.0),
    ({"task": "teacher"}, 1.0),  # one output
    ({"model": "mlp", "dataset": "unknown", "loss_fn": "mse"}, 1.0),  # an imported run's config
], ids=["teacher-10-sum", "mnist5k-json", "mean", "xent", "one-output", "imported"])
def test_stored_test_loss_scale(config: object, want: float) -> None:
    from gammadb.analysis._common import stored_test_loss_scale

    assert stored_test_loss_scale(config) == want


def test_an_unreadable_stored_config_is_an_analysis_error(store: Store) -> None:
    _multi_output_sweep(store, "c10", "sum")
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE runs SET config = :c"), {"c": '{"task": "teacher", "out_dim": "many"}'})
    with pytest.raises(AnalysisError, match="stored config that cannot be read: out_dim"):
        load_runs(store, "c10")


# ---------------------------------------------------------------------- eta_conv and the criterion's name
#: Per level, largest eta first: which seeds diverge (NaN from step 5). 10^2 and 10^1.5 diverge, 10
#: and 10^0.5 converge, 1 diverges in seed 1 (the authors' scan restarts), 10^-0.5 converges and
#: anchors the range, ..., 10^-4 (3.5 decades below the anchor: outside the authors' 3-decade
#: window) diverges in seed 0, 10^-4.5 converges.
SCAN_LEVELS = {2.0: (0, 1), 1.5: (0, 1), 1.0: (), 0.5: (), 0.0: (1,), -0.5: (), -1.0: (), -1.5: (), -2.0: (),
               -2.5: (), -3.0: (), -3.5: (), -4.0: (0,), -4.5: ()}


def scan_frame(gammas: Sequence[float], loss_fn: str) -> pl.DataFrame:
    t = np.arange(11)
    frames = []
    for g in gammas:
        for k, bad in SCAN_LEVELS.items():
            for s in (0, 1):
                loss = np.exp(-t.astype(float))
                if s in bad:
                    loss[5:] = np.nan
                frames.append(pl.DataFrame({"gamma": g, "eta": 10.0**k, "seed": s, "step": t, "loss": loss,
                                            "loss_fn": loss_fn, "model": "mlp", "depth": 3}))
    return pl.concat(frames)


def test_eta_conv_is_the_authors_scan_replayed_whatever_the_training_order(store: Store) -> None:
    """A divergence below a convergent eta moves the authors' largest convergent eta below it (not
    eta_max, not eta_stable); beyond the 3-decade window it does not, except with cross-entropy at
    gamma < 1, whose scan has no window. The replay reads the stored runs, so the order they were
    stored in (their run ids) changes nothing."""
    df = pl.concat([scan_frame([0.5, 2.0], "xent"), scan_frame([0.5], "mse")])
    import_frame(store, df, "scan")
    import_frame(store, df.reverse(), "scan-reversed")  # the runs created (trained) the other way round

    def points(sweep: str) -> dict:
        res = olr.analyze(store, sweep, settings=olr.Settings(n_boot=30))
        return {(r["loss_fn"], r["gamma"]): (r["eta_conv"], r["eta_stable"], r["eta_max"])
                for r in res.points.iter_rows(named=True)}

    got = points("scan")
    assert got == points("scan-reversed")
    a = pytest.approx
    assert got[("mse", 0.5)] == (a(10**-0.5), a(10.0), a(10.0))
    assert got[("xent", 2.0)] == (a(10**-0.5), a(10.0), a(10.0))
    assert got[("xent", 0.5)] == (a(10**-4.5), a(10.0), a(10.0))  # the whole grid: the divergence at 1e-4 counts
    # a narrower window (a sweep scanned 0.5 decades below its anchor) never reaches the divergence at 1
    res = olr.analyze(store, "scan", settings=olr.Settings(n_boot=30, decades_below=0.5))
    conv = {(r["loss_fn"], r["gamma"]): r["eta_conv"] for r in res.points.iter_rows(named=True)}
    assert conv[("mse", 0.5)] == a(10.0) and conv[("xent", 0.5)] == a(10**-4.5)
    assert res.to_json()["scan_decades_below"] == 0.5


def test_eta_conv_window_is_the_sweeps_decades_below() -> None:
    assert olr.scan_decades({"adaptive": True, "decades_below": 2.0}) == 2.0
    assert olr.scan_decades({"source": "import", "imported": True}) == 3.0
    assert olr.scan_decades({"decades_below": "x"}) == 3.0
    with pytest.raises(InvalidSpecError, match="decades_below must be > 0"):
        olr.Settings(decades_below=0.0).check()


@pytest.mark.parametrize(("criterion", "meaning"), [
    (Criterion.test, "the test loss at the last evaluation up to the budget: the paper's eta*"),
    (Criterion.tail_mean, "the mean training loss over the last 10% of the steps up to the budget"),
], ids=["test-is-the-papers", "tail-mean"])
def test_the_output_names_the_criterion(synth_store: Store, criterion: Criterion, meaning: str) -> None:
    res = olr.analyze(synth_store, "law", settings=olr.Settings(criterion=criterion, n_boot=20))
    doc = res.to_json()
    assert (doc["criterion"], doc["criterion_meaning"]) == (criterion.value, meaning)
    title = olr.report_tables(res)[0][0]
    assert f"criterion {criterion.value} ({meaning})" in title


# ---------------------------------------------------------------------- what would fill a missing fit
def _fill_flags(reason: str) -> dict[str, str]:
    """The '--flag value' pairs after '; to fill it: ', which must end the reason."""
    head, sep, tail = reason.rpartition("; to fill it: ")
    assert sep and head, reason
    words = tail.split()
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), tail
    return dict(zip(words[::2], words[1::2]))


def test_a_missing_fit_ends_with_the_flags_that_fill_it(edge_store: Store) -> None:
    from gammadb.runners.spec import spec_from_flags

    res = olr.analyze(edge_store, "two-small", settings=olr.Settings(n_boot=50))
    missing = res.fits.filter(pl.col("exponent").is_null())
    assert sorted(missing["target"]) == ["eta_conv", "eta_max", "eta_star"]
    assert set(missing["regime"]) == {"small_gamma"}
    for reason in missing["reason"]:
        flags = _fill_flags(reason)
        spec = spec_from_flags(gamma=flags["--gamma"], eta=flags["--eta"], seeds=flags["--seeds"],
                               steps=flags["--steps"])
        small = [g for g in spec.gammas if g <= 0.1 * (1 + 1e-9)]
        assert len(small) >= 3 and min(small) == pytest.approx(1e-3), spec.gammas
        assert len(spec.seeds) == 3 and spec.base.steps == 30
        # the etas reach eta* at the new small gammas (eta* ~ gamma^2): 0.5e-6 at gamma = 1e-3
        assert min(spec.etas) <= law(1e-3) / 10 and max(spec.etas) >= 4 * law(1000.0)
    # the fits that were made carry no suggestion
    assert res.fits.filter(pl.col("exponent").is_not_null())["reason"].is_null().all()


def test_a_one_seed_interval_reason_suggests_three_seeds(edge_store: Store) -> None:
    res = olr.analyze(edge_store, "one-seed", settings=olr.Settings(n_boot=50))
    for reason in res.points["reason"]:
        assert "1 seed: no bootstrap interval on eta*; to fill it: " in reason
        flags = _fill_flags(reason)
        assert flags["--seeds"] == "3"
        # the same gammas: the sweep's own grid, rerun with more seeds
        assert flags["--gamma"] == "1e-3:1e-1:5", reason  # GAMMAS[:5]: 1e-3 .. 0.1, 2 a decade


def test_the_pure_path_suggests_nothing() -> None:
    """Without a store (a frame through analyze_runs) there is no stored grid to grow: plain reasons."""
    res = olr.analyze_runs(reference_table(synth(gammas=[1e-2, 1.0], seeds=(0,)), 30), "frame",
                           olr.Settings(n_boot=20))
    assert res.fits["exponent"].is_null().all()
    assert all("to fill it" not in r for r in res.fits["reason"].to_list() + res.points["reason"].to_list())
