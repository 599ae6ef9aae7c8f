"""Gaps a mutation audit found in the tests of `gammadb.analysis.optimal_lr` and of the per-run table
it reads: thresholds relative to the initial loss, a bootstrap interval with width, and a NaN stored
in the tail window of a run that the runs table calls healthy."""

from __future__ import annotations

import math

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis import optimal_lr as olr
from gammadb.analysis._common import RunTable, load_runs
from gammadb.metrics import LOSS, MetricKey
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_optimal_lr import _runs_frame

# One gamma, two seeds: (eta, tail loss of seed 0, of seed 1) as fractions of the initial loss;
# None = diverged. On the plateau at 0.001, off it from 0.01, trained (<= 0.2) at 0.1 and 1, best at 0.1.
LADDER = [(0.001, 0.95, 0.97), (0.01, 0.3, 0.5), (0.1, 0.04, 0.06), (1.0, 0.1, 0.1), (10.0, None, 0.1)]


def ladder_runs(scale: float) -> pl.DataFrame:
    rows = []
    for eta, *tails in LADDER:
        for seed, tail in enumerate(tails):
            value = None if tail is None else tail * scale
            rows.append({"gamma": 1.0, "eta": eta, "seed": seed, "diverged": tail is None,
                         "initial_loss": scale, "tail_mean_loss": value, "final_loss": value})
    return _runs_frame(rows)


def analyze(runs: pl.DataFrame, **settings: float) -> olr.OptimalLr:
    return olr.analyze_runs(RunTable(runs, 50, "sql"), "ladder", olr.Settings(n_boot=200, **settings))


@pytest.mark.parametrize("scale", [0.1, 10.0], ids=["losses-x0.1", "losses-x10"])
def test_eta_max_and_eta_min_are_relative_to_the_initial_loss(scale: float) -> None:
    """"Trained" is loss <= converged x initial, "left the plateau" loss < threshold x initial:
    multiplying every loss by a constant changes no edge (an absolute threshold would)."""
    cols = ["eta_star", "eta_max", "eta_stable", "eta_min", "eta_star_lo", "eta_star_hi", "reason"]
    base = analyze(ladder_runs(1.0), converged=0.2, threshold=0.9).points
    assert base.select("eta_max", "eta_stable", "eta_min").row(0) == (1.0, 1.0, 0.01)
    scaled = analyze(ladder_runs(scale), converged=0.2, threshold=0.9).points
    assert_frame_equal(scaled.select(cols), base.select(cols), check_exact=False, rel_tol=1e-9)
    assert scaled["loss_at_eta_star"][0] == pytest.approx(0.05 * scale)
    # and the thresholds are what move the edges
    strict = analyze(ladder_runs(scale), converged=0.06, threshold=0.45).points
    assert strict.select("eta_max", "eta_min").row(0) == (0.1, 0.01)
    assert analyze(ladder_runs(scale), converged=0.06, threshold=0.35).points["eta_min"][0] == 0.1


def test_bootstrap_interval_contains_eta_star_and_has_width() -> None:
    """Two seeds: a bootstrap draw holds seed 0 twice, seed 1 twice, or one of each, so eta* of the
    draws takes three values, and with 200 draws the 2.5% and 97.5% percentiles are the outer two:
    the parabola vertices of each seed's curve alone."""
    res = analyze(ladder_runs(1.0), converged=0.2)
    p = res.points.row(0, named=True)

    def vertex(yl: float, yc: float, yr: float) -> float:  # in log10 eta, around the grid point -1
        a, b, c = math.log(yl), math.log(yc), math.log(yr)
        return -1 - 0.5 * (c - a) / (a - 2 * b + c)

    only0, only1 = 10 ** vertex(0.3, 0.04, 0.1), 10 ** vertex(0.5, 0.06, 0.1)
    assert p["eta_star"] == pytest.approx(10 ** vertex(0.4, 0.05, 0.1))
    assert (p["eta_star_lo"], p["eta_star_hi"]) == (pytest.approx(only0), pytest.approx(only1))
    assert p["eta_star_lo"] < p["eta_star"] < p["eta_star_hi"]
    assert math.log10(p["eta_star_hi"] / p["eta_star_lo"]) > 0.1  # a tenth of a decade wide


def test_a_nan_before_the_tail_window_is_a_divergence_on_both_read_paths(store: Store) -> None:
    """A NaN stored at step 5 (outside the tail window) of a run with no diverged_at: its summary
    says diverged, and so do both read paths of the analysis (it used to come back healthy)."""
    rows = [dict(gamma=1.0, eta=eta, seed=0, step=step, loss=1.0 / (1 + eta * step))
            for eta in (0.1, 0.2) for step in range(41)]
    import_frame(store, pl.DataFrame(rows), "nan-early")
    healthy, bad = store.runs_frame("nan-early").sort("eta")["run_id"].to_list()
    with store.writer(background=False) as w:
        w.log(bad, 5, {MetricKey(LOSS): math.nan})
    store.rebuild_summaries("nan-early")
    assert store.get_run(bad).diverged_at is None and store.summaries([bad])[bad].diverged
    for table in (load_runs(store, "nan-early"), load_runs(store, "nan-early", force_sql=True)):
        assert table.frame.sort("run_id")["diverged"].to_list() == [False, True], table.source
    cells = olr.analyze(store, "nan-early", settings=olr.Settings(n_boot=20)).cells
    assert cells.sort("eta")["diverged"].to_list() == [False, True]


def test_a_nan_in_the_tail_window_is_a_divergence_on_both_read_paths(store: Store) -> None:
    """A NaN stored inside the tail window of a run whose row has no diverged_at (a NaN written in
    place after an import): the stored summary and the SQL aggregation both call the run diverged."""
    rows = [dict(gamma=1.0, eta=eta, seed=0, step=step, loss=1.0 / (1 + eta * step))
            for eta in (0.1, 0.2) for step in range(41)]
    import_frame(store, pl.DataFrame(rows), "nan-tail")
    runs = store.runs_frame("nan-tail").sort("eta")
    healthy, bad = runs["run_id"].to_list()
    with store.writer(background=False) as w:  # step 38: inside the tail (steps 36..40), not the last
        w.log(bad, 38, {MetricKey(LOSS): math.nan})
    store.rebuild_summaries("nan-tail")
    assert store.get_run(bad).diverged_at is None
    summary = store.summaries([bad])[bad]
    assert summary.diverged and summary.tail_mean_loss is None and summary.final_loss == pytest.approx(1 / 9)

    fast, slow = load_runs(store, "nan-tail"), load_runs(store, "nan-tail", force_sql=True)
    assert (fast.source, slow.source) == ("summaries", "sql")
    want_tail = sum(1.0 / (1 + 0.1 * s) for s in range(36, 41)) / 5
    cols = ["run_id", "diverged", "last_step", "final_loss", "tail_mean_loss"]
    want = pl.DataFrame({"run_id": [healthy, bad], "diverged": [False, True], "last_step": [40, None],
                         "final_loss": [1 / 5, None], "tail_mean_loss": [want_tail, None]},
                        schema={"run_id": pl.Int64, "diverged": pl.Boolean, "last_step": pl.Int64,
                                "final_loss": pl.Float64, "tail_mean_loss": pl.Float64})
    for table in (fast, slow):
        assert_frame_equal(table.frame.select(cols), want, check_exact=False, rel_tol=1e-12)
    cells = olr.analyze(store, "nan-tail", settings=olr.Settings(n_boot=20)).cells
    assert cells.sort("eta")["diverged"].to_list() == [False, True]
