"""Plateaus and staircases, trajectory collapse, log-step downsampling and run selection.

Synthetic curves with known structure: staircases with known drop steps (multiplicative noise), and
families L(eta t / gamma^p) whose time-scale exponent is known.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis.collapse import (
    CollapseOptions,
    Curve,
    analyze_collapse,
    collapse_frame,
    fit_time_scale,
    parse_metric,
    rms_distance,
)
from gammadb.analysis.downsample import (
    bucketed_series,
    parse_where,
    rows_budget_per_decade,
    select_runs,
)
from gammadb.analysis.etas import eta_max_table, eta_star_table
from gammadb.analysis.fits import power_law_regression
from gammadb.analysis.plateaus import (
    PlateauOptions,
    analyze_plateaus,
    find_drops,
    plateau_scaling,
    plateaus_of_steps,
)
from gammadb.analysis.smoothing import smooth_log_curve
from gammadb.buckets import bucket_frame
from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.metrics import MetricKey
from gammadb.transfer import import_frame


# ---------------------------------------------------------------------------------------- generators
def staircase(T: int, drops: list[float], sizes: list[float], *, width: float = 0.1, noise: float = 0.15,
              seed: int = 0, start: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A loss that falls by ``sizes[k]`` decades around step ``drops[k]`` (a logistic in linear time
    of width ``width * drops[k]``), times lognormal minibatch noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, T + 1, dtype=float)
    log_l = np.zeros_like(t)
    for tk, dk in zip(drops, sizes):
        log_l -= dk * math.log(10) / (1 + np.exp(-(t - tk) / (width * tk)))
    return t.astype(np.int64), np.exp(log_l + noise * rng.standard_normal(t.size))


def universal(tau: np.ndarray) -> np.ndarray:
    """A plateau, a drop at tau ~ 1, a second step at tau ~ 8, then a slow tau^-1/2 tail (so that
    further along in tau is always better): the shape every run shares."""
    lv = math.log(0.2) / (1 + np.exp(-(tau - 1) / 0.1)) + math.log(0.1) / (1 + np.exp(-(tau - 8) / 0.8))
    return np.exp(lv) * (1 + tau / 20) ** -0.5 + 1e-3


def family_frame(gammas, etas, *, T: int = 20_000, p: float = 1.0, seeds=(0,), noise: float = 0.1,
                 metrics: bool = False, depth: int = 3, seed: int = 1) -> pl.DataFrame:
    """Runs whose loss is universal(eta t / gamma^p) with noise (the import format)."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, T + 1)
    frames = []
    for g in gammas:
        for e in etas:
            for s in seeds:
                tau = e * t / g**p
                cols = {"gamma": float(g), "eta": float(e), "seed": s, "step": t, "depth": depth, "model": "toy",
                        "loss": universal(tau) * np.exp(noise * rng.standard_normal(t.size))}
                if metrics:
                    cols["weight_change.l1"] = 0.1 * np.tanh(tau / 2)
                    cols["weight_change.l2"] = 0.2 * np.tanh(tau / 3)
                    cols["feature_alignment"] = 0.2 + 0.7 * (1 - universal(tau))
                frames.append(pl.DataFrame(cols))
    return pl.concat(frames)


def raw_frame(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(runs, long series) of an import-format frame, without a store: run ids by (gamma, eta, seed)."""
    runs = df.select("gamma", "eta", "seed").unique(maintain_order=True).with_row_index("run_id", offset=1)
    runs = runs.with_columns(pl.col("run_id").cast(pl.Int64), pl.lit(None, pl.Int64).alias("diverged_at"))
    long = df.join(runs, on=["gamma", "eta", "seed"]).select("run_id", "step", pl.col("loss").alias("value"))
    return runs, long


# ---------------------------------------------------------------------------------------- downsampling
def test_bucket_frame_golden():
    raw = pl.DataFrame({"run_id": [1] * 6 + [2] * 2, "step": [0, 1, 2, 3, 10, 11, 1, 5],
                        "value": [9.0, 1.0, 2.0, math.nan, 4.0, 8.0, 3.0, math.inf]})
    got = bucket_frame(raw, per_decade=2)  # buckets: floor(2 log10 step): 1->0, 2,3->0, 10,11->2
    want = pl.DataFrame({
        "run_id": [1, 1, 2], "bucket": [0, 2, 0], "step_lo": [1, 10, 1], "step_hi": [2, 11, 1],
        "step": [math.sqrt(2), math.sqrt(110), 1.0], "n": [2, 2, 1], "mean": [1.5, 6.0, 3.0],
        "min": [1.0, 4.0, 3.0], "max": [2.0, 8.0, 3.0],
        "mean_log": [math.log(2) / 2, (math.log(4) + math.log(8)) / 2, math.log(3)],
    })
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12)


def test_sql_buckets_match_polars_and_keep_spikes(store):
    df = family_frame([10.0, 100.0], [0.1], T=3000, metrics=True)
    import_frame(store, df, "ds")
    runs = store.runs_frame("ds")
    ids = runs["run_id"].to_list()
    for key in (MetricKey("loss"), MetricKey("weight_change", 2)):
        got = bucketed_series(store, ids, key, per_decade=20)
        raw = store.series(ids, metrics=[key.name]).filter(pl.col("layer") == key.layer)
        want = bucket_frame(raw.select("run_id", "step", "value"), per_decade=20)
        assert got.height == want.height <= 2 * (int(20 * math.log10(3000)) + 1)  # early buckets hold no step
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9)
    # min and max survive the reduction: a single spike stays visible
    t = np.arange(1, 20_001)
    loss = np.ones(t.size)
    loss[12_344] = 1e3  # one spike (step 12345) in 2 x 10^4 steps
    import_frame(store, pl.DataFrame({"gamma": 1.0, "eta": 1.0, "seed": 0, "step": t, "loss": loss}), "spike")
    b = bucketed_series(store, store.runs_frame("spike")["run_id"].to_list(), "loss", per_decade=10)
    assert b.height <= 44 and b["n"].sum() == t.size  # 4.3 decades x 10 buckets (the first few hold no step)
    assert b["max"].max() == 1e3 and b["min"].min() == 1.0
    spiked = b.filter(pl.col("max") == 1e3)
    assert spiked.height == 1 and spiked["step_lo"][0] <= 12_345 <= spiked["step_hi"][0]
    assert rows_budget_per_decade(5000, 5, 20_000) == 4  # thousands of curves: fewer buckets, >= 4 a decade
    assert rows_budget_per_decade(10, 5, 20_000) == 40
    # a divisor of the finest grid where one fits: few grids, whatever the selection (the store caches each)
    assert rows_budget_per_decade(220, 4.1, 20_000) == 20  # 22 fits; 20 divides 40
    assert {rows_budget_per_decade(n, 4.1, 20_000) for n in range(1, 3000)} == {40, 20, 10, 8, 5, 4}
    assert rows_budget_per_decade(200, 4.1, 20_000, per_decade=7) == 7 and rows_budget_per_decade(
        900, 4.1, 20_000, per_decade=7) == 5  # no divisor of 7 in 4..5: the fit as before


# ---------------------------------------------------------------------------------------- where
@pytest.mark.parametrize("text,conditions", [
    ("gamma > 10", [("gamma", ">", (10.0,))]),
    ("depth = 3 and eta <= 0.1", [("depth", "=", (3,)), ("eta", "<=", (0.1,))]),
    ("model in (mlp, 'toy')", [("model", "IN", ("mlp", "toy"))]),
    ("status != diverged", [("status", "<>", ("diverged",))]),
    ("model = \"x' OR '1'='1\"", [("model", "=", ("x' OR '1'='1",))]),
], ids=["gt", "and", "in", "ne", "quoted-injection-is-a-value"])
def test_parse_where(text, conditions):
    """--where text becomes typed conditions (the store renders them as SQL: tests/store)."""
    assert [(c.column, c.op, c.values) for c in parse_where(text)] == conditions


@pytest.mark.parametrize("text", [
    "gamma > 10; DROP TABLE runs", "1=1", "gamma > 10 or 1=1", "value > 3", "model = a b", "gamma in 10",
    "gamma > nan", "depth = 2.5", "",
], ids=["semicolon", "no-column", "or", "unknown-column", "unquoted-space", "in-no-parens", "nan", "int", "empty"])
def test_parse_where_refuses(text):
    with pytest.raises(InvalidSpecError):
        parse_where(text)


def test_select_runs_binds_values(store):
    import_frame(store, family_frame([10.0, 100.0, 1000.0], [0.1], T=50), "w")
    assert select_runs(store, "w", ["gamma >= 100"])["gamma"].to_list() == [100.0, 1000.0]
    assert select_runs(store, "w", ["gamma = 100"])["gamma"].to_list() == [100.0]
    with pytest.raises(InvalidSpecError, match="no run of sweep 'w' matches model"):  # bound as a value
        select_runs(store, "w", ["model = \"toy' OR '1'='1\""])
    assert store.runs_frame("w").height == 3  # nothing was dropped or changed


# ---------------------------------------------------------------------------------------- plateaus
STAIRCASES = {
    "three-steps": ([300, 3000, 20_000], [0.6, 0.6, 0.6]),
    "early-and-late": ([120, 1500], [1.0, 0.5]),
    "one-drop": ([1000], [0.8]),
    "five-steps": ([150, 600, 2500, 10_000, 40_000], [0.5, 0.6, 0.5, 0.6, 0.5]),
}


@pytest.mark.parametrize("name", list(STAIRCASES), ids=list(STAIRCASES))
def test_staircase_drops_found(name):
    drops, sizes = STAIRCASES[name]
    for seed in range(3):
        steps, loss = staircase(60_000, drops, sizes, seed=seed)
        res = plateaus_of_steps(steps, loss)
        assert res.status == "ok"
        assert [d.step for d in res.drops] == pytest.approx(drops, rel=0.3)  # right count
        for d, true in zip(res.drops, drops):
            assert max(d.step / true, true / d.step) < 1.3
        assert res.drops[0].plateau_steps < drops[0] and res.plateau_end_step < drops[0]
        for d, size in zip(res.drops, sizes):  # the smoothed levels carry the drop's size
            assert math.log10(d.loss_before / d.loss_after) == pytest.approx(size, abs=0.2)


def test_staircase_random_positions():
    """Random drop positions, sizes and widths: count right and every step within a factor 1.3."""
    rng = np.random.default_rng(11)
    worst = 1.0
    for i in range(30):
        k = int(rng.integers(1, 4))
        d = np.sort(10 ** rng.uniform(2.2, 4.5, k))
        while k > 1 and np.min(np.diff(np.log10(d))) < 0.7:
            d = np.sort(10 ** rng.uniform(2.2, 4.5, k))
        steps, loss = staircase(50_000, list(d), list(rng.uniform(0.5, 1.0, k)), width=float(rng.uniform(0.03, 0.12)),
                                noise=0.2, seed=i)
        found = [x.step for x in plateaus_of_steps(steps, loss).drops]
        assert len(found) == k, (d, found)
        worst = max(worst, max(max(f / x, x / f) for f, x in zip(found, d)))
    assert worst < 1.3


def test_escape_is_half_way_down():
    steps, loss = staircase(20_000, [2000], [1.0], noise=0.05)
    res = plateaus_of_steps(steps, loss)
    # linear half way from 1 to 0.1: 0.55, i.e. log-logistic value 0.55 -> t = 2000 (1 + 0.1 ln(0.45/0.55...))
    t = np.arange(1, 20_001, dtype=float)
    clean = np.exp(-math.log(10) / (1 + np.exp(-(t - 2000) / 200)))
    true = t[np.argmax(clean <= (clean[0] + clean[-1]) / 2)]
    assert res.escape_step == pytest.approx(true, rel=0.1)


@pytest.mark.parametrize("case", ["flat", "power-law", "single-step", "empty", "diverged"])
def test_plateau_edge_cases(case):
    rng = np.random.default_rng(3)
    if case == "flat":
        steps = np.arange(1, 20_001)
        res = plateaus_of_steps(steps, np.exp(0.2 * rng.standard_normal(steps.size)))
        assert res.status == "no_drop" and res.drops == () and res.escape_step is None
        assert "no drop" in res.note
    elif case == "power-law":  # a smooth t^-0.5 decay is not a staircase
        steps = np.arange(1, 100_001)
        res = plateaus_of_steps(steps, steps**-0.5 * np.exp(0.1 * rng.standard_normal(steps.size)))
        assert res.status == "no_drop" and res.escape_step is not None
    elif case == "single-step":
        res = plateaus_of_steps([1], [0.7])
        assert res.status == "too_short" and "1 logged step" in res.note and res.drops == ()
    elif case == "empty":
        res = plateaus_of_steps([0], [0.7])  # step 0 has no place in log time
        assert res.status == "no_data" and res.drops == ()
    else:
        steps, loss = staircase(3000, [300], [1.0])
        res = plateaus_of_steps(steps, np.where(steps > 2500, np.inf, loss), diverged_at=2501)
        assert res.status == "diverged" and "2501" in res.note and len(res.drops) == 1


def test_detect_plateaus_is_curve_plateaus_of_each_run():
    """detect_plateaus slices one sorted frame instead of filtering per curve: the same tables as
    curve_plateaus run by run, whatever the row order, with a run that has no bucket, one with only
    non-positive losses, and one too short."""
    import dataclasses

    from gammadb.analysis.plateaus import curve_plateaus, detect_plateaus

    frames = []
    for rid, (drops, sizes) in enumerate(STAIRCASES.values(), start=1):
        steps, loss = staircase(20_000, drops, sizes, seed=rid)
        frames.append(pl.DataFrame({"run_id": rid, "step": steps, "value": loss}))
    frames.append(pl.DataFrame({"run_id": 7, "step": np.arange(1, 500), "value": -1.0}))  # no log
    frames.append(pl.DataFrame({"run_id": 8, "step": [1, 2], "value": [0.5, 0.4]}))  # too short
    buckets = bucket_frame(pl.concat(frames), 40).sample(fraction=1.0, shuffle=True, seed=0)
    runs = pl.DataFrame({"run_id": [8, 1, 2, 3, 4, 6, 7], "gamma": 1.0, "eta": 0.1, "seed": 0,
                         "diverged_at": [None, None, 15_000, None, None, 40, None]})
    table, drops = detect_plateaus(buckets, runs)
    assert table["run_id"].to_list() == runs["run_id"].to_list()
    for r in runs.iter_rows(named=True):
        want = curve_plateaus(buckets.filter(pl.col("run_id") == r["run_id"]), diverged_at=r["diverged_at"])
        got = table.filter(pl.col("run_id") == r["run_id"]).row(0, named=True)
        assert {k: got[k] for k in ("status", "note", "first_step", "last_step", "plateau_end_step",
                                    "escape_step", "initial_loss", "final_loss", "n_drops")} == {
            "status": want.status, "note": want.note, "first_step": want.first_step, "last_step": want.last_step,
            "plateau_end_step": want.plateau_end_step, "escape_step": want.escape_step,
            "initial_loss": want.initial_loss, "final_loss": want.final_loss, "n_drops": len(want.drops)}
        mine = drops.filter(pl.col("run_id") == r["run_id"]).drop("run_id", "drop").to_dicts()
        assert mine == [dataclasses.asdict(d) for d in want.drops]
    assert set(table["status"]) == {"ok", "diverged", "no_data", "too_short"} and drops.height >= 8
    empty_table, empty_drops = detect_plateaus(buckets.head(0), runs.head(2))
    assert empty_table["status"].to_list() == ["no_data", "no_data"] and empty_drops.is_empty()


def test_catapult_recovery_is_not_a_drop():
    steps = np.arange(1, 20_001, dtype=float)
    spike = 1 + 30 * np.exp(-((np.log10(steps) - 1.5) / 0.15) ** 2)  # up 30x around step 30, back down
    res = plateaus_of_steps(steps.astype(int), spike * np.exp(0.05 * np.random.default_rng(0).standard_normal(steps.size)))
    assert res.drops == ()


def test_smoother_keeps_straight_loglog_lines():
    x = np.linspace(0, 4, 161)
    y = -0.7 * x + 1.0
    gx, gy = smooth_log_curve(x, y, np.ones_like(x), bandwidth=0.05, min_samples=16, grid=0.01)
    assert np.allclose(gy, -0.7 * gx + 1.0, atol=1e-9)  # local-linear: no bias at the ends either


def test_find_drops_thresholds_are_options():
    gx = np.linspace(0, 4, 401)
    gy = -0.3 / (1 + np.exp(-(gx - 2) / 0.03))  # a 0.3-decade drop at step 100
    assert len(find_drops(gx, gy, PlateauOptions())) == 1
    assert find_drops(gx, gy, PlateauOptions(min_drop=0.5)) == []
    with pytest.raises(InvalidSpecError):
        PlateauOptions(edge_slope=2.0)


def test_power_law_fit_recovers_exponents():
    rng = np.random.default_rng(0)
    g = np.repeat([10.0, 30.0, 100.0, 300.0, 1000.0], 3)
    e = np.tile([0.01, 0.03, 0.1], 5)
    y = 2.0 * g**0.4 * e**-1.0 * np.exp(0.02 * rng.standard_normal(g.size))
    fit = power_law_regression(y, {"gamma": g, "eta": e})
    assert fit["exponents"]["gamma"] == pytest.approx(0.4, abs=0.02)
    assert fit["exponents"]["eta"] == pytest.approx(-1.0, abs=0.02)
    lo, hi = fit["ci"]["gamma"]
    assert lo < fit["exponents"]["gamma"] < hi and hi - lo < 0.03 and fit["dof"] == 12
    assert fit["prefactor"] == pytest.approx(2.0, rel=0.1)
    with pytest.raises(AnalysisError, match="lock-step"):
        power_law_regression(y, {"gamma": g, "eta": g**0.5})


def test_plateaus_in_the_store_with_scaling(store):
    # Plateau ~ gamma / eta along eta*: the largest eta trains best here, so eta* = 0.1 at every gamma.
    df = family_frame([10.0, 31.6, 100.0, 316.0], [0.03, 0.1], T=10_000)
    rows = []
    t = np.arange(0, 2001)
    rows.append(pl.DataFrame({"gamma": 10.0, "eta": 3.0, "seed": 0, "step": t, "depth": 3, "model": "toy",
                              "loss": np.where(t >= 1500, np.inf, np.exp(t / 400))}))  # diverged
    rows.append(pl.DataFrame({"gamma": 10.0, "eta": 0.001, "seed": 0, "step": [0, 1], "depth": 3, "model": "toy",
                              "loss": [1.0, 1.0]}))  # one step after the start
    import_frame(store, pl.concat([df, *rows]), "stairs")
    rep = analyze_plateaus(store, "stairs")
    doc = rep.to_json()
    by = {(r["gamma"], r["eta"]): r for r in doc["runs"]}
    for g in (10.0, 31.6, 100.0, 316.0):
        r = by[(g, 0.1)]
        true = [s for s in (g / 0.1, 8 * g / 0.1) if s < 10_000]  # drops at tau = 1 and 8 within the budget
        assert [d["step"] for d in r["drops"]] == pytest.approx(true, rel=0.3)
        assert set(r["drops"][0]) >= {"step", "loss_before", "loss_after", "plateau_steps"}
    assert by[(10.0, 3.0)]["status"] == "diverged" and by[(10.0, 3.0)]["diverged_at"] == 1500
    assert by[(10.0, 0.001)]["status"] == "too_short"
    assert by[(316.0, 0.03)]["n_drops"] <= 1  # tau reaches only 0.95: at most the start of the first drop
    (grp,) = doc["scaling"]["groups"]
    assert grp["exponent"] == pytest.approx(1.0, abs=0.05)  # plateau ~ gamma / eta*
    lo, hi = grp["exponent_ci"]
    assert lo <= grp["exponent"] <= hi
    assert grp["theory_exponent"] == pytest.approx(1 / 3) and grp["depth"] == 3
    assert [p["eta"] for p in grp["points"]] == [0.1] * 4
    (mx,) = plateau_scaling(rep.runs, store.runs_frame("stairs"), along="eta_max")["groups"]
    # gamma 316 never reached 10% of its initial loss (tau <= 3.2): no eta trained it
    assert [(p["gamma"], p["eta"]) for p in mx["points"]] == [(10.0, 0.1), (31.6, 0.1), (100.0, 0.1)]
    assert mx["exponent"] == pytest.approx(1.0, abs=0.05)
    sel = analyze_plateaus(store, "stairs", where=["eta = 0.1", "gamma < 100"])
    assert sorted(sel.runs["gamma"].to_list()) == [10.0, 31.6]


def test_eta_max_is_the_largest_eta_that_trained():
    runs = pl.DataFrame({"gamma": [1.0] * 5, "eta": [0.1, 0.3, 1.0, 1.0, 3.0], "seed": [0, 0, 0, 1, 0],
                         "status": ["completed", "completed", "completed", "completed", "diverged"],
                         "initial_loss": [1.0] * 5, "tail_mean_loss": [0.01, 0.05, 0.02, 0.5, None]})
    assert eta_max_table(runs, [])["eta_max"].to_list() == [0.3]  # eta 1 stalled in one seed, 3 diverged


def test_eta_star_ties_take_the_best_grid_point():  # as analyze optimal-lr: the smallest tied eta
    runs = pl.DataFrame({"gamma": [1.0] * 4, "eta": [0.1, 0.3, 1.0, 3.0], "seed": [0] * 4,
                         "status": ["completed"] * 4, "tail_mean_loss": [0.5, 0.0, 0.0, 0.0]})
    assert eta_star_table(runs, [])[["eta_star", "n_tied"]].rows() == [(0.3, 3)]


def test_eta_star_counts_divergence_as_worst():
    runs = pl.DataFrame({"gamma": [1.0] * 4, "eta": [0.1, 0.1, 1.0, 1.0], "seed": [0, 1, 0, 1],
                         "status": ["completed", "completed", "completed", "diverged"],
                         "tail_mean_loss": [0.5, 0.5, 0.01, None]})
    assert eta_star_table(runs, [])["eta_star"].to_list() == [0.1]


def test_too_few_gammas(store):
    import_frame(store, family_frame([10.0, 100.0], [0.1], T=5000), "two")
    (grp,) = analyze_plateaus(store, "two").scaling["groups"]
    assert grp["exponent"] is None and "at least 3" in grp["reason"]
    rep = analyze_collapse(store, "two")
    assert rep.fit["exponent_gamma"] is None and "needs 3" in rep.fit["note"]
    with pytest.raises(AnalysisError, match="at least 2 runs"):
        analyze_collapse(store, "two", gamma_min=50.0)


# ---------------------------------------------------------------------------------------- collapse
@pytest.mark.parametrize("p", [1.0, 0.7], ids=["theory", "other-exponent"])
def test_collapse_recovers_gamma_exponent(p):
    gammas = [10.0, 31.6, 100.0, 316.0, 1000.0]
    runs, long = raw_frame(family_frame(gammas, [0.05], T=30_000, p=p))
    rep = collapse_frame(runs, bucket_frame(long))
    assert rep.fit["exponent_gamma"] == pytest.approx(-p, abs=0.05)
    lo, hi = rep.fit["exponent_gamma_ci"]
    assert lo < -p < hi
    assert rep.rms_after_fit < 0.1 * rep.rms_before
    if p == 1.0:
        assert rep.rms_after_theory < 0.1 * rep.rms_before
    else:  # the theory's tau is then the wrong clock, and the RMS says so
        assert rep.rms_after_theory > 3 * rep.rms_after_fit
    assert "eta is fixed" in rep.fit["note"] and rep.fit["exponent_eta"] is None


def test_collapse_joint_gamma_eta_fit():
    runs, long = raw_frame(family_frame([10.0, 100.0, 1000.0], [0.02, 0.06, 0.2], T=30_000))
    rep = collapse_frame(runs, bucket_frame(long))
    assert rep.fit["exponent_gamma"] == pytest.approx(-1.0, abs=0.05)
    assert rep.fit["exponent_eta"] == pytest.approx(1.0, abs=0.05)
    assert rep.reference["gamma"] == 100.0


def test_rms_compares_within_the_shared_range():
    x = np.linspace(0, 4, 401)
    drop = -1.0 / (1 + np.exp(-(x - 2) / 0.05))
    a, b = Curve(x, np.maximum(drop, -0.8)), Curve(x, np.maximum(drop, -0.95))  # same curve, two floors
    assert rms_distance(a, b, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert rms_distance(a, Curve(x + 5, drop), 0.0) is None  # no common window


def test_collapse_tau_max_restricts_to_early_times():
    gammas = [10.0, 31.6, 100.0]  # tau reaches 150, 47, 15
    df = family_frame(gammas, [0.05], T=30_000, noise=0.02)
    # late times (tau > 20) stop collapsing: the tail's rate then depends on gamma
    df = df.with_columns(pl.when(pl.col("eta") * pl.col("step") / pl.col("gamma") > 20)
                         .then(pl.col("loss") * (pl.col("eta") * pl.col("step") / pl.col("gamma") / 20) ** (-pl.col("gamma").log10()))
                         .otherwise(pl.col("loss")).alias("loss"))
    runs, long = raw_frame(df)
    full = collapse_frame(runs, bucket_frame(long))
    early = collapse_frame(runs, bucket_frame(long), opts=CollapseOptions(tau_max=15.0))
    assert early.rms_after_theory < 0.5 * full.rms_after_theory
    assert early.fit["exponent_gamma"] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(InvalidSpecError):
        CollapseOptions(tau_max=0.0)


def test_fit_time_scale_ignores_plateaus():
    x = np.linspace(0, 4, 401)
    ref = Curve(x, -1.0 / (1 + np.exp(-(x - 2) / 0.05)))
    run = Curve(x, -1.0 / (1 + np.exp(-(x - 2.7) / 0.05)))  # same drop 0.7 decades later
    ls, spread, _ = fit_time_scale(run, ref, falling=True)
    assert ls == pytest.approx(-0.7, abs=0.01) and spread < 0.01
    flat = Curve(x, np.zeros_like(x))
    assert fit_time_scale(flat, ref, falling=True)[0] is None


def test_collapse_in_the_store(store):
    df = family_frame([10.0, 100.0, 1000.0], [0.1], T=20_000, metrics=True)
    logged = np.unique(np.round(np.logspace(0, np.log10(20_000), 300))).astype(np.int64)  # metrics on a log cadence, loss every step
    metric_cols = ["weight_change.l1", "weight_change.l2", "feature_alignment"]
    df = df.with_columns(pl.when(pl.col("step").is_in(logged)).then(pl.col(c)).otherwise(None).alias(c)
                         for c in metric_cols)
    extra = [
        pl.DataFrame({"gamma": 100.0, "eta": 0.1, "seed": 7, "step": [0, 1, 2], "depth": 3, "model": "toy",
                      "loss": [1.0, 1.0, np.nan]}),  # diverged at step 2: skipped, and says why
        pl.DataFrame({"gamma": 3000.0, "eta": 0.1, "seed": 0, "step": np.arange(0, 20_001), "depth": 3,
                      "model": "toy", "loss": np.ones(20_001)}),  # still on its plateau: nothing to align
    ]
    import_frame(store, pl.concat([df, *extra], how="diagonal_relaxed"), "col")
    rep = analyze_collapse(store, "col")
    doc = rep.to_json()
    assert set(doc) >= {"sweep", "metric", "reference", "theory", "rms_before", "rms_after_theory",
                        "rms_after_fit", "runs", "fit"}
    assert doc["theory"]["tau"] == "eta*t/gamma" and doc["reference"]["gamma"] == 100.0
    assert doc["rms_after_theory"] < 0.1 * doc["rms_before"]
    by = {(r["gamma"], r["seed"]): r for r in doc["runs"]}
    assert by[(100.0, 7)]["status"] == "skipped" and "diverged at step 2" in by[(100.0, 7)]["note"]
    assert by[(3000.0, 0)]["status"] == "no_fit" and "plateau" in by[(3000.0, 0)]["note"]
    assert by[(1000.0, 0)]["time_scale"] == pytest.approx(0.1, rel=0.05)
    assert by[(10.0, 0)]["time_scale"] == pytest.approx(10.0, rel=0.05)
    assert doc["fit"]["exponent_gamma"] == pytest.approx(-1.0, abs=0.05)
    # any other metric, by name and layer
    wc = analyze_collapse(store, "col", metric="weight_change.l2")
    assert wc.fit["exponent_gamma"] == pytest.approx(-1.0, abs=0.05) and wc.transform == "log10"
    two = analyze_collapse(store, "col", where=["gamma <= 100"])
    assert sorted(set(two.runs["gamma"].to_list())) == [10.0, 100.0]
    fa = analyze_collapse(store, "col", metric="feature_alignment")
    assert fa.fit["exponent_gamma"] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(AnalysisError, match="weight_change.l1, weight_change.l2"):
        analyze_collapse(store, "col", metric="weight_change")  # layer 0 does not exist: say what does


@pytest.mark.parametrize("text,key", [("loss", MetricKey("loss", 0)), ("weight_change.l2", MetricKey("weight_change", 2)),
                                      ("weight_change:3", MetricKey("weight_change", 3))], ids=["plain", "dot-l", "colon"])
def test_parse_metric(text, key):
    assert parse_metric(text) == key


def test_collapse_options_validated():
    with pytest.raises(InvalidSpecError):
        CollapseOptions(transform="sqrt")
    with pytest.raises(InvalidSpecError):
        CollapseOptions(level_lo=0.9, level_hi=0.1)
