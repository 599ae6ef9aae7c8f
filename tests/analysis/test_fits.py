"""`gammadb.analysis.fits`: power laws in log-log space, the offset law and the smoothly broken power law."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis.fits import broken_power_law, fit_columns, loglog_slopes, offset_law, power_law
from gammadb.errors import AnalysisError, InvalidSpecError


def test_exact_power_law() -> None:
    x = np.logspace(-3, -1, 5)
    fit = power_law(x, 0.7 * x**2)
    assert fit.exponent == pytest.approx(2.0) and fit.prefactor == pytest.approx(0.7)
    assert fit.r2_log == pytest.approx(1.0) and fit.n_points == 5 and fit.reason is None
    assert fit.exponent_ci == pytest.approx((2.0, 2.0))
    assert fit.x_range == pytest.approx((1e-3, 0.1))
    np.testing.assert_allclose(fit.predict(np.array([0.01])), [0.7e-4])


def test_noisy_power_law_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(1)
    x = np.logspace(1, 3, 9)
    y = 3.0 * x ** (2 / 3) * np.exp(0.1 * rng.normal(size=x.size))
    fit = power_law(x, y, n_boot=2000, seed=3)
    lo, hi = fit.exponent_ci
    assert lo < 2 / 3 < hi and hi - lo < 0.3
    assert fit.r2_log > 0.95


def test_bootstrap_draws_of_y_widen_the_interval() -> None:
    x = np.logspace(-3, -1, 5)
    y = x**2
    rng = np.random.default_rng(0)
    draws = y[None, :] * np.exp(0.3 * rng.normal(size=(500, 5)))
    tight = power_law(x, y, n_boot=500)
    wide = power_law(x, y, y_boot=draws, n_boot=500)
    assert tight.exponent == wide.exponent == pytest.approx(2.0)
    assert (wide.exponent_ci[1] - wide.exponent_ci[0]) > 0.1 > (tight.exponent_ci[1] - tight.exponent_ci[0])


@pytest.mark.parametrize(("x", "y", "reason"), [
    ([1.0, 10.0], [1.0, 100.0], "2 distinct x value(s) with a usable points (need >= 3)"),
    ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "1 distinct x value(s) with a usable points (need >= 3)"),
    ([1.0, 10.0, 100.0], [1.0, -1.0, math.nan], "1 distinct x value(s) with a usable points (need >= 3)"),
], ids=["two-points", "one-x", "non-positive-and-nan"])
def test_too_few_points_is_null_with_a_reason(x: list, y: list, reason: str) -> None:
    fit = power_law(x, y)
    assert fit.exponent is None and fit.exponent_ci is None and fit.prefactor is None
    assert fit.reason == reason


def test_loglog_slopes_rowwise_with_nan() -> None:
    lx = np.array([0.0, 1.0, 2.0, 3.0])
    ly = np.array([[0.0, 2.0, 4.0, 6.0], [1.0, np.nan, 1.5, np.nan], [5.0, np.nan, np.nan, np.nan]])
    slope, icpt = loglog_slopes(lx, ly)
    np.testing.assert_allclose(slope[:2], [2.0, 0.25])
    np.testing.assert_allclose(icpt[:2], [0.0, 1.0])
    assert math.isnan(slope[2])


def test_offset_law_recovers_parameters() -> None:
    x = np.logspace(0, 4, 30)
    rng = np.random.default_rng(0)
    y = 2.0 * x**-0.5 + 0.1 + 0.001 * rng.normal(size=x.size)
    fit = offset_law(x, y, n_boot=100)
    assert fit.alpha == pytest.approx(0.5, abs=0.03) and fit.c == pytest.approx(0.1, abs=0.005)
    assert fit.a == pytest.approx(2.0, rel=0.05) and fit.r2 > 0.999
    assert fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]
    assert fit.c_ci[0] <= fit.c <= fit.c_ci[1]


def test_offset_law_needs_four_points() -> None:
    fit = offset_law([1.0, 2.0, 3.0], [1.0, 0.5, 0.3])
    assert fit.alpha is None and fit.reason == "3 distinct x value(s) (need >= 4 for a, alpha and c)"


@pytest.mark.parametrize("depth", [2, 3, 4], ids=["L2", "L3", "L4"])
def test_broken_power_law_recovers_the_toy_form(depth: int) -> None:
    # 2/lambda* of the toy model is exactly this form: slopes 2 and 2/L, knee at gamma = 1
    g = np.logspace(-3, 3, 13)
    y = 2 * g**2 / (depth * (1 + g) ** (2 * (depth - 1) / depth))
    fit = broken_power_law(g, y)
    assert fit.slope_small == pytest.approx(2.0, abs=1e-4)
    assert fit.slope_large == pytest.approx(2 / depth, abs=1e-4)
    assert fit.knee == pytest.approx(1.0, rel=1e-3) and fit.reason is None
    np.testing.assert_allclose(fit.predict(g), y, rtol=1e-4)


def test_broken_power_law_without_a_break_says_so() -> None:
    g = np.logspace(-3, 3, 13)
    fit = broken_power_law(g, g**1.5)
    assert fit.slope_small == pytest.approx(1.5) and fit.slope_large == pytest.approx(1.5)
    assert fit.reason == "the two slopes agree (1.5 vs 1.5): one power law, the knee is arbitrary"
    # a break beyond the data: only its near side is seen
    fit = broken_power_law(g, g**2 / (1 + g / 1e4))
    assert fit.reason == "the knee sits at the edge of the gamma range: no break is resolved inside it"


def test_broken_power_law_fits_as_well_as_the_scipy_fit_it_replaced() -> None:
    """The knee is searched over the whole gamma range (variable projection): on 60 random eta*
    curves the fit's residual is never larger than that of scipy's least squares from the five starts
    the fit used before."""
    from scipy.optimize import least_squares

    from gammadb.analysis.fits import _broken_log10

    rng = np.random.default_rng(0)
    for trial in range(60):
        depth = int(rng.integers(2, 5))
        g = np.logspace(-3, 3, int(rng.integers(6, 14)))
        y = g**2 / (1 + g ** (2 - 2 / depth)) * 10 ** rng.normal(0, rng.choice([0.01, 0.1, 0.3]), g.size)
        u, v = np.log10(g), np.log10(y)
        best = math.inf
        for ub0 in np.linspace(u.min(), u.max(), 7)[1:-1]:  # the starts of the replaced fit
            la0 = float(np.median(v - _broken_log10(u, 0.0, 2.0, 0.5, ub0)))
            res = least_squares(lambda p: _broken_log10(u, *p) - v, x0=[la0, 2.0, 0.5, ub0],
                                bounds=([-np.inf, -10, -10, u.min()], [np.inf, 10, 10, u.max()]))
            best = min(best, 2 * res.cost)
        fit = broken_power_law(g, y)
        r = v - np.log10(fit.predict(g))
        assert float(r @ r) <= best * (1 + 1e-9) + 1e-15, trial


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 8, 13, 30, 120, 5000])
def test_t_quantile_is_scipy_s(dof: int) -> None:
    from scipy.special import stdtrit

    from gammadb.analysis.fits import t_quantile

    for p in (0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.05, 0.025):
        assert t_quantile(dof, p) == pytest.approx(float(stdtrit(dof, p)), rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(0, 0.9)


def test_the_analyses_of_a_report_import_no_scipy(tmp_path) -> None:
    """scipy takes 0.5 s to import: the optimal-lr analysis, its fits and their intervals need none."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from gammadb.analysis.fits import broken_power_law, power_law_regression, power_law\n"
            "g = np.logspace(-3, 3, 13)\n"
            "broken_power_law(g, g**2 / (1 + g))\n"
            "power_law_regression(g**2 * (1 + 0.01 * np.sin(g)), {'gamma': g})\n"
            "power_law(g, g**2)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fit_columns_golden_table() -> None:
    df = pl.DataFrame({"gamma": [1.0, 10.0, 100.0, 1000.0, 0.0, None], "loss": [2.0, 0.2, 0.02, 0.002, 1.0, 1.0],
                       "name": ["a"] * 6})
    res = fit_columns(df, "gamma", "loss", n_boot=50)
    assert (res.n_rows, res.n_dropped) == (6, 2)
    want = pl.DataFrame({"law": ["y = A x^k"], "exponent": [-1.0], "prefactor": [2.0], "r2": [1.0], "n_points": [4]})
    assert_frame_equal(res.table().head(1).select(want.columns), want, check_exact=False, rel_tol=1e-9)
    doc = res.to_json()
    assert set(doc) == {"x", "y", "n_rows", "n_dropped", "power_law", "offset_law"}
    assert doc["power_law"]["exponent"] == pytest.approx(-1.0)
    assert doc["power_law"]["exponent_ci"] == pytest.approx([-1.0, -1.0])
    assert set(doc["offset_law"]) == {"a", "alpha", "alpha_ci", "c", "c_ci", "r2", "n_points", "reason"}


def test_fit_columns_range_and_errors() -> None:
    df = pl.DataFrame({"x": [1.0, 2.0, 4.0, 8.0, 16.0], "y": [1.0, 4.0, 16.0, 64.0, 1.0], "s": ["a"] * 5})
    res = fit_columns(df, "x", "y", xmax=8.0, n_boot=20)
    assert res.power_law.exponent == pytest.approx(2.0) and res.n_rows == 4
    with pytest.raises(InvalidSpecError, match="no column 'z'"):
        fit_columns(df, "x", "z")
    with pytest.raises(InvalidSpecError, match="column 's' is String, not numeric"):
        fit_columns(df, "x", "s")
    with pytest.raises(InvalidSpecError, match="--xmin"):
        fit_columns(df, "x", "y", xmin=5.0, xmax=2.0)
    with pytest.raises(AnalysisError, match="no rows with x in the requested range"):
        fit_columns(df, "x", "y", xmin=100.0)
