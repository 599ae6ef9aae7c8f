"""`gammadb.analysis.phase`: diverged / trained / under-trained / catapult cells and the trainable band."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis import phase as ph
from gammadb.analysis.optimal_lr import index_groups
from gammadb.errors import InvalidSpecError
from gammadb.store import Store
from gammadb.transfer import import_frame

# (gamma, eta) -> kind of curve; the band is [0.01, 0.1] at gamma 0.1 and 1 and closed at gamma 10
LAYOUT = {
    (0.1, 0.001): "plateau", (0.1, 0.01): "descent", (0.1, 0.1): "catapult", (0.1, 1.0): "diverge",
    (1.0, 0.001): "plateau", (1.0, 0.01): "descent", (1.0, 0.1): "descent", (1.0, 1.0): "diverge",
    (10.0, 0.001): "plateau", (10.0, 0.01): "plateau", (10.0, 0.1): "plateau", (10.0, 1.0): "diverge",
}


def curve(kind: str, steps: int = 40, seed: int = 0) -> np.ndarray:
    t = np.arange(steps + 1, dtype=float)
    wiggle = 1 + 0.01 * np.sin(t + seed)
    if kind == "plateau":
        return 0.98 * wiggle
    if kind == "descent":
        return (0.02 + 0.98 * np.exp(-t / 5)) * wiggle
    if kind == "catapult":  # up to 6x the start by step 3, then down to 5%
        return (0.05 + 0.95 * np.exp(-t / 6) + 8.0 * t * np.exp(-t)) * wiggle
    loss = np.exp(t / 3)
    loss[10:] = math.inf
    return loss


def layout_frame(seeds: tuple[int, ...] = (0, 1)) -> pl.DataFrame:
    frames = []
    for (g, eta), kind in LAYOUT.items():
        for s in seeds:
            y = curve(kind, seed=s)
            frames.append(pl.DataFrame({"gamma": g, "eta": eta, "seed": s, "step": np.arange(y.size), "loss": y,
                                        "depth": 3}))
    return pl.concat(frames)


def _runs(rows: list[tuple]) -> pl.DataFrame:
    cols = ["gamma", "eta", "seed", "diverged", "initial_loss", "tail_mean_loss", "max_loss"]
    df = pl.DataFrame(rows, schema=cols, orient="row")
    df = df.with_columns(*(pl.lit(v).alias(c) for c, v in (("model", "mlp"), ("dataset", "t"), ("loss_fn", "mse"),
                                                             ("optimizer", "sgd"), ("depth", 3), ("width", 8),
                                                             ("batch_size", 4))))
    return index_groups(df)[1]


def test_golden_cells_and_boundaries() -> None:
    runs = _runs([
        (1.0, 0.01, 0, False, 1.0, 0.95, 1.0),   # under-trained
        (1.0, 0.01, 1, False, 1.0, 0.97, 1.0),
        (1.0, 0.1, 0, False, 1.0, 0.5, 3.0),     # catapult in one seed of two: still catapult (half)
        (1.0, 0.1, 1, False, 1.0, 0.3, 1.0),
        (1.0, 1.0, 0, False, 1.0, 0.5, 1.0),     # trained
        (1.0, 1.0, 1, True, 1.0, None, None),    # ... but one seed diverged: diverged
        (2.0, 0.1, 0, False, 1.0, 1.2, 3.0),     # spiked but never fell below the start: under-trained
        (2.0, 1.0, 0, False, 2.0, 0.2, 2.0),     # trained (ratio 0.1)
    ])
    cells = ph.classify_cells(runs, threshold=0.9, spike=2.0)
    want = pl.DataFrame({
        "group_idx": [0] * 5, "gamma": [1.0, 1.0, 1.0, 2.0, 2.0], "eta": [0.01, 0.1, 1.0, 0.1, 1.0],
        "phase": ["under-trained", "catapult", "diverged", "under-trained", "trained"],
        "loss_ratio": [0.96, 0.4, None, 1.2, 0.1], "peak_ratio": [1.0, 3.0, None, 3.0, 1.0],
        "n_seeds": [2, 2, 2, 1, 1], "n_diverged": [0, 0, 1, 0, 0],
    }, schema_overrides={"group_idx": pl.Int64})
    assert_frame_equal(cells, want, check_exact=False, rel_tol=1e-12)

    bounds = ph.boundaries(cells)
    assert_frame_equal(bounds, pl.DataFrame({
        "group_idx": [0, 0], "gamma": [1.0, 2.0], "eta_lower": [0.1, 1.0], "eta_upper": [0.1, 1.0],
        "band_decades": [0.0, 0.0], "eta_diverged": [1.0, None], "n_diverged": [1, 0], "n_catapult": [1, 0],
        "n_trained": [0, 1], "n_under_trained": [1, 1],
    }, schema_overrides={"group_idx": pl.Int64}))
    assert ph.gamma_closed(bounds)["gamma_closed"].to_list() == [None]


def test_gamma_closed_is_where_the_band_ends() -> None:
    bounds = pl.DataFrame({"group_idx": [0, 0, 0, 0, 1, 1], "gamma": [1.0, 10.0, 100.0, 1000.0, 1.0, 10.0],
                           "n_trained": [3, 1, 0, 0, 0, 0], "n_catapult": [0, 1, 0, 0, 0, 0]})
    got = ph.gamma_closed(bounds)
    assert got.sort("group_idx")["gamma_closed"].to_list() == [100.0, None]


def test_phase_map_from_the_store(store: Store) -> None:
    import_frame(store, layout_frame(), "phases")
    pm = ph.analyze(store, "phases")
    assert pm.budget_step == 40
    got = {(r["gamma"], r["eta"]): r["phase"] for r in pm.cells.iter_rows(named=True)}
    want = {k: {"plateau": "under-trained", "descent": "trained", "catapult": "catapult",
                "diverge": "diverged"}[v] for k, v in LAYOUT.items()}
    assert got == want
    b = pm.boundaries.select("gamma", "eta_lower", "eta_upper", "band_decades", "eta_diverged")
    assert_frame_equal(b, pl.DataFrame({
        "gamma": [0.1, 1.0, 10.0], "eta_lower": [0.01, 0.01, None], "eta_upper": [0.1, 0.1, None],
        "band_decades": [1.0, 1.0, None], "eta_diverged": [1.0, 1.0, 1.0]}), check_exact=False, rel_tol=1e-12)
    doc = pm.to_json()
    assert set(doc) == {"sweep", "budget_step", "threshold", "spike", "groups"}
    g = doc["groups"][0]
    assert g["gamma_closed"] == 10.0 and g["group"]["depth"] == 3
    assert set(g["cells"][0]) == {"gamma", "eta", "phase", "loss_ratio", "peak_ratio", "n_seeds", "n_diverged"}
    assert set(g["boundaries"][0]) == {"gamma", "eta_lower", "eta_upper", "band_decades", "eta_diverged",
                                       "n_diverged", "n_catapult", "n_trained", "n_under_trained"}
    titles = [t for t, _ in ph.report_tables(pm)]
    assert titles == ["phases (loss_fn=mse, optimizer=sgd, depth=3): trainable band per gamma at step 40 "
                      "(band closes at gamma = 10)"]


def test_an_early_budget_sees_the_catapult_still_high(store: Store) -> None:
    import_frame(store, layout_frame(seeds=(0,)), "early")
    pm = ph.analyze(store, "early", budget=4)  # the catapult has not come down by step 4
    cell = pm.cells.filter((pl.col("gamma") == 0.1) & (pl.col("eta") == 0.1)).row(0, named=True)
    assert cell["phase"] == "under-trained" and cell["peak_ratio"] > 2.0


@pytest.mark.parametrize(("threshold", "spike"), [(1.0, 2.0), (0.9, 1.0), (0.9, math.inf)],
                         ids=["threshold-1", "spike-1", "spike-inf"])
def test_bad_options_are_refused(threshold: float, spike: float) -> None:
    with pytest.raises(InvalidSpecError):
        ph.phase_map(pl.DataFrame(), "x", 1, threshold=threshold, spike=spike)
