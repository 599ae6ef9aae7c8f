"""tau = eta t / gamma (gammadb.analysis.clock): one definition, used by every analysis and chart."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from gammadb.analysis.charts_curves import plateau_marks
from gammadb.analysis.clock import step_at_tau, tau, tau_expr


def test_tau_values_and_inverse() -> None:
    assert tau(100, 0.1, 10.0) == pytest.approx(1.0)
    assert tau(np.array([1.0, 10.0]), 2.0, 4.0).tolist() == [0.5, 5.0]
    assert step_at_tau(tau(1234.0, 0.03, 7.0), 0.03, 7.0) == pytest.approx(1234.0)


def test_tau_expr_is_tau() -> None:
    df = pl.DataFrame({"step": [1.0, 50.0, 2000.0], "eta": [0.1, 0.3, 3.0], "gamma": [10.0, 1.0, 1000.0]})
    got = df.select(tau_expr())
    assert got.columns == ["tau"]
    assert got["tau"].to_list() == [tau(s, e, g) for s, e, g in df.iter_rows()]
    named = df.rename({"step": "t", "eta": "lr", "gamma": "g"}).select(tau_expr("t", "lr", "g").alias("x"))
    assert named["x"].to_list() == got["tau"].to_list()


def test_chart_marks_use_the_clock() -> None:
    table = pl.DataFrame({"run_id": [1], "gamma": [100.0], "eta": [0.1], "seed": [0], "first_step": [1],
                          "plateau_end_step": [1000], "initial_loss": [1.0]})
    drops = pl.DataFrame({"run_id": [1], "drop": [1], "step": [2000], "loss_before": [1.0], "loss_after": [0.1]})
    marks = plateau_marks(table, drops).sort("kind")
    assert marks["tau"].to_list() == pytest.approx([tau(2000, 0.1, 100.0), tau(1, 0.1, 100.0)])
    assert marks["tau_end"].to_list()[1] == pytest.approx(tau(1000, 0.1, 100.0))
