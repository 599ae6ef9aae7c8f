"""The eta families (gammadb.analysis.etas): the families of the curve analyses run at the grid eta
that analyze optimal-lr reports, on the same thresholds."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gammadb.analysis import optimal_lr as olr
from gammadb.analysis._common import RunTable
from gammadb.analysis.etas import (
    CONVERGED,
    LEFT_PLATEAU,
    family_etas,
    group_columns,
    nearest_grid_index,
    select_family,
)
from gammadb.errors import InvalidSpecError
from gammadb.records import RUN_COLUMNS, RunStatus

BASE = {"model": "mlp", "dataset": "teacher", "loss_fn": "mse", "optimizer": "sgd", "depth": 3, "width": 64,
        "batch_size": 32}
# (gamma, eta, seed, tail-mean loss; None = diverged), initial loss 1 everywhere
CELLS = [
    # gamma 1: eta* refines off the grid, to 10^-0.75 (the parabola of test_golden_points); eta 10 diverged
    (1.0, 0.01, 0, 0.3), (1.0, 0.01, 1, 0.5), (1.0, 0.1, 0, 0.04), (1.0, 0.1, 1, 0.06),
    (1.0, 1.0, 0, 0.1), (1.0, 1.0, 1, 0.1), (1.0, 10.0, 0, None), (1.0, 10.0, 1, 0.1),
    # gamma 2: three etas tie at a loss of 0: optimal-lr's best grid point is the smallest of them and
    # its parabola peaks midway to the next; the family takes the best grid point
    (2.0, 0.1, 0, 0.5), (2.0, 0.3, 0, 0.0), (2.0, 1.0, 0, 0.0), (2.0, 3.0, 0, 0.0),
    # gamma 3: the thresholds at their edges: eta 0.3 ends at exactly CONVERGED x initial (trained:
    # <=), eta 0.03 at exactly LEFT_PLATEAU x initial (still on the plateau: <); eta 1 trained in one
    # seed only (seed mean 0.26: not trained)
    (3.0, 0.03, 0, LEFT_PLATEAU), (3.0, 0.1, 0, 0.2), (3.0, 0.3, 0, CONVERGED), (3.0, 1.0, 0, 0.02),
    (3.0, 1.0, 1, 0.5), (3.0, 0.03, 1, LEFT_PLATEAU), (3.0, 0.1, 1, 0.2), (3.0, 0.3, 1, CONVERGED),
]


def runs_frame() -> pl.DataFrame:
    """The cells as the store's runs frame (what plateaus, collapse and the report select from)."""
    rows = [{"run_id": i + 1, **BASE, "gamma": g, "eta": e, "seed": s,
             "status": (RunStatus.DIVERGED if t is None else RunStatus.COMPLETED).value, "diverged_at": None,
             "initial_loss": 1.0, "tail_mean_loss": t, "final_loss": t} for i, (g, e, s, t) in enumerate(CELLS)]
    return pl.DataFrame(rows, schema_overrides={"diverged_at": pl.Int64, "tail_mean_loss": pl.Float64,
                                                "final_loss": pl.Float64})


def optimal(runs: pl.DataFrame) -> pl.DataFrame:
    """analyze optimal-lr's points for the same cells."""
    table = runs.with_columns((pl.col("status") == RunStatus.DIVERGED.value).alias("diverged")).drop("status")
    return olr.analyze_runs(RunTable(table, 50, "sql"), "etas", olr.Settings(n_boot=20)).points.sort("gamma")


def test_family_runs_at_optimal_lrs_grid_eta() -> None:
    runs = runs_frame()
    fam = family_etas(runs, group_columns(runs))
    pts = optimal(runs)
    assert fam["gamma"].to_list() == pts["gamma"].to_list() == [1.0, 2.0, 3.0]
    # eta*: optimal-lr refines off the grid (gamma 1: 10^-0.75; gamma 2: midway between 0.3 and 1);
    # the family runs at the grid eta nearest it, which is optimal-lr's best grid point
    assert pts["eta_star"][0] == pytest.approx(10**-0.75) and pts["eta_star"][1] == pytest.approx(math.sqrt(0.3))
    assert fam["eta_star"].to_list() == [0.1, 0.3, 0.3]
    assert fam["eta_star_refined"].to_list() == pytest.approx(pts["eta_star"].to_list())
    assert fam["n_tied"].to_list() == [1, 3, 1]
    for col in ("eta_max", "eta_stable", "eta_min", "loss_at_eta_star"):
        assert fam[col].to_list() == pytest.approx(pts[col].to_list(), rel=1e-12), col
    # the thresholds at their edges (gamma 3): trained at exactly CONVERGED (<=), still on the plateau
    # at exactly LEFT_PLATEAU (<), not trained when only one seed trained
    third = fam.row(2, named=True)
    assert {k: third[k] for k in ("eta_max", "eta_stable", "eta_min")} == {"eta_max": 0.3, "eta_stable": 1.0,
                                                                             "eta_min": 0.1}


def test_select_family_takes_those_runs() -> None:
    runs = runs_frame()
    keys = group_columns(runs)
    star = select_family(runs, "eta_star", None, keys)
    assert star.select("gamma", "eta").unique().sort("gamma").rows() == [(1.0, 0.1), (2.0, 0.3), (3.0, 0.3)]
    top = select_family(runs, "eta_max", None, keys)
    assert top.select("gamma", "eta").unique().sort("gamma").rows() == [(1.0, 1.0), (2.0, 3.0), (3.0, 0.3)]
    assert select_family(runs, "all", None, keys).height == runs.height


def test_fixed_family_matches_a_displayed_eta() -> None:
    runs = runs_frame().with_columns(pl.col("eta") * 10**0.5)  # etas no %g prints exactly
    keys = group_columns(runs)
    shown = float(f"{0.1 * 10**0.5:g}")  # what an error message or a table shows: 0.316228
    assert shown != 0.1 * 10**0.5
    got = select_family(runs, "fixed", shown, keys)
    assert set(got["eta"].to_list()) == {0.1 * 10**0.5} and got.height == 5
    with pytest.raises(InvalidSpecError, match="no run at eta = 0.317"):
        select_family(runs, "fixed", 0.317, keys)


def test_unfinished_runs_are_left_out_and_divergence_counts() -> None:
    runs = runs_frame()
    # a pending run cannot make a cell better or worse; a completed run with a recorded divergence step
    # makes its cell infinitely bad (as optimal-lr reads it)
    extra = runs.head(2).with_columns(pl.Series("run_id", [100, 101]), pl.lit(2.0).alias("gamma"),
                                      pl.lit(0.1).alias("eta"), pl.Series("seed", [5, 6]),
                                      pl.Series("status", [RunStatus.PENDING.value, RunStatus.COMPLETED.value]),
                                      pl.Series("tail_mean_loss", [0.0, 0.0]), pl.Series("diverged_at", [None, 7]))
    fam = family_etas(pl.concat([runs, extra]), RUN_COLUMNS)
    assert fam.filter(pl.col("gamma") == 2.0)["eta_star"].to_list() == [0.3]
    assert fam.filter(pl.col("gamma") == 2.0)["eta_stable"].to_list() == [3.0]


@pytest.mark.parametrize(("star", "best", "want"), [
    (-0.4, 1, 1),    # nearer the best point
    (-0.5, 1, 1),    # midway (an exact tie): the best point
    (0.7, 1, 2),     # another point is nearer
    (float("nan"), -1, -1),
], ids=["near-best", "midway", "nearer-other", "none"])
def test_nearest_grid_index(star: float, best: int, want: int) -> None:
    assert nearest_grid_index(np.array([-1.0, 0.0, 1.0]), star, best) == want


# ---------------------------------------------------------------------- eta_conv: the authors' scan replayed
def _levels(*cells: tuple[float, bool]) -> tuple:
    """A one-seed grid from (eta, diverged) cells: (EtaGrid, any_div (1, E), tried (1, E))."""
    from gammadb.analysis.etas import eta_grid

    etas = np.array([e for e, _ in cells])
    div = np.array([d for _, d in cells])
    g = eta_grid({"eta": etas, "seed": np.zeros(etas.size), "diverged": div, "value": np.ones(etas.size),
                  "tail_mean_loss": np.ones(etas.size), "initial_loss": np.ones(etas.size)})
    order = np.argsort(etas)
    return g, div[order][None, :], np.ones((1, etas.size), bool)


@pytest.mark.parametrize(("cells", "decades", "whole", "want"), [
    # 10 diverged, 1 converged: the largest convergent eta is 1
    ([(10.0, True), (1.0, False), (0.1, False), (0.01, False)], 3.0, False, 1.0),
    # a divergence at 0.1, within 3 decades of 1: the scan restarts below it, at 0.01
    ([(10.0, True), (1.0, False), (0.1, True), (0.01, False), (1e-3, False)], 3.0, False, 0.01),
    # the same divergence 1 decade + below a 1-decade window: out of range, 1 stands
    ([(10.0, True), (1.0, False), (0.1, False), (0.01, True), (1e-3, False)], 1.0, False, 1.0),
    # exactly at the window's lower end: inside (the authors stop strictly below it)
    ([(1.0, False), (0.1, True), (0.01, False)], 1.0, False, 0.01),
    # cross-entropy at gamma < 1: no window, a divergence 5 decades down still moves it
    ([(1.0, False), (0.1, False), (1e-5, True), (1e-6, False)], 3.0, True, 1e-6),
    # the lowest level diverged: the scan found no convergent eta
    ([(1.0, False), (0.1, True)], 3.0, False, None),
], ids=["first-convergent", "restart-below", "outside-window", "window-edge", "xent-whole-grid", "none"])
def test_eta_conv_replays_the_authors_scan(cells: list, decades: float, whole: bool, want: float | None) -> None:
    from gammadb.analysis.etas import convergent_indices
    from gammadb.runners.eta_scan import replay

    g, div, tried = _levels(*cells)
    i = int(convergent_indices(g, div, tried, decades_below=decades, whole=whole)[0])
    assert (None if i < 0 else float(g.etas[i])) == want
    assert replay(cells, decades, whole) == want
    assert replay(list(reversed(cells)), decades, whole) == want  # the order runs were trained in: irrelevant


def test_eta_conv_per_bootstrap_row_skips_levels_with_no_seed_drawn() -> None:
    """Bootstrap rows: a level whose seeds were not drawn is not a level of that row."""
    from gammadb.analysis.etas import convergent_indices

    g, _, _ = _levels((1.0, False), (0.1, False), (0.01, False))
    div = np.array([[False, True, False], [False, True, False], [False, False, False]])  # ascending etas
    tried = np.array([[True, True, True], [True, False, True], [True, True, True]])
    got = convergent_indices(g, div, tried, decades_below=3.0)
    # row 0: 0.1 diverged -> 0.01 (index 0); row 1: 0.1 not drawn -> 1.0; row 2: 1.0
    assert got.tolist() == [0, 2, 2]


def test_eta_conv_of_many_bootstrap_rows_is_each_rows_own_replay() -> None:
    """Rows are replayed once per distinct pattern (found on packed bits: 2 x 13 levels span four
    bytes); each row gets its own pattern's answer, whatever the order the patterns come in."""
    from gammadb.analysis.etas import convergent_indices
    from gammadb.runners.eta_scan import replay

    rng = np.random.default_rng(6)
    g, _, _ = _levels(*[(10.0 ** (1 - k / 2), False) for k in range(13)])
    div, tried = rng.random((400, 13)) < 0.15, rng.random((400, 13)) < 0.9
    got = convergent_indices(g, div, tried, decades_below=1.0)
    for row, i in zip(range(400), got):
        eta = replay([(float(g.etas[k]), bool(div[row, k])) for k in range(13) if tried[row, k]], 1.0, False)
        assert i == (-1 if eta is None else int(np.flatnonzero(g.etas == eta)[0]))
    assert len(set(got.tolist())) > 3


def test_family_etas_reports_eta_conv() -> None:
    runs = runs_frame()
    fam = family_etas(runs, group_columns(runs)).sort("gamma")
    # gamma 1: eta 10 has a diverged seed, 1 is the first convergent; nothing diverges below it
    assert fam["eta_conv"].to_list() == [1.0, 3.0, 1.0]
    assert fam["eta_conv"].to_list() == fam["eta_stable"].to_list()
    low = runs.with_columns(pl.when((pl.col("gamma") == 1.0) & (pl.col("eta") == 0.1) & (pl.col("seed") == 1))
                            .then(pl.lit(RunStatus.DIVERGED.value)).otherwise(pl.col("status")).alias("status"))
    fam = family_etas(low, group_columns(low)).sort("gamma")
    assert fam["eta_conv"].to_list()[0] == 0.01 and fam["eta_stable"].to_list()[0] == 1.0
