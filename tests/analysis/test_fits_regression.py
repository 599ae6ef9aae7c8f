"""power_law_regression (several regressors, Student-t intervals) beside power_law (one x, bootstrap):
on one regressor both are the same least-squares line in log-log."""

from __future__ import annotations

import numpy as np
import pytest

from gammadb.analysis.fits import power_law, power_law_regression


def test_one_regressor_agrees_with_power_law() -> None:
    rng = np.random.default_rng(3)
    x = np.logspace(0, 3, 12)
    y = 5.0 * x**-0.7 * np.exp(0.05 * rng.standard_normal(x.size))
    reg = power_law_regression(y, {"x": x})
    one = power_law(x, y, n_boot=50)
    assert reg["exponents"]["x"] == pytest.approx(one.exponent, rel=1e-12)
    assert reg["prefactor"] == pytest.approx(one.prefactor, rel=1e-12)
    assert reg["r2"] == pytest.approx(one.r2_log, rel=1e-12)
    lo, hi = reg["ci"]["x"]
    assert lo < -0.7 < hi and reg["dof"] == 10
