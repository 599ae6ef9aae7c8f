"""Gaps a mutation audit found in the plateau analysis tests: eta* there must count a diverged run
as infinitely bad even when its stored tail loss is finite (a series that went non-finite, then
logged finite values again, as an imported one can)."""

from __future__ import annotations

import polars as pl

from gammadb.analysis.etas import eta_star_table


def test_eta_star_counts_a_diverged_run_as_worst_whatever_its_tail() -> None:
    runs = pl.DataFrame({"gamma": [1.0] * 4, "eta": [0.1, 0.1, 1.0, 1.0], "seed": [0, 1, 0, 1],
                         "status": ["completed", "completed", "completed", "diverged"],
                         "tail_mean_loss": [0.5, 0.5, 0.01, 0.001]})
    got = eta_star_table(runs, [])
    assert got.select("eta_star", "loss_at_eta_star", "n_tied").row(0) == (0.1, 0.5, 1)
