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
