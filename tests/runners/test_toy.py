"""The scalar deep linear model: closed forms against the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from gammadb.runners.toy import converges, eta_max, lambda_star, numeric_eta_max, toy_config


def test_closed_forms_vectorise_and_have_the_papers_limits() -> None:
    gammas = np.logspace(-3, 3, 7)
    depths = np.array([2, 3, 4])[:, None]
    lam = lambda_star(gammas, depths)
    assert lam.shape == (3, 7)
    assert float(lambda_star(1.0, 2)) == pytest.approx(2 * 2.0 / 1.0)  # L (1+g)^(2(L-1)/L) / g^2
    np.testing.assert_allclose(eta_max(gammas, depths), 2 / lam)
    # gamma << 1: 2 gamma^2 / L; gamma >> 1: (2 / L) gamma^(2/L).
    for depth in (2, 3, 4):
        assert float(eta_max(1e-6, depth)) == pytest.approx(2e-12 / depth, rel=1e-4)
        assert float(eta_max(1e8, depth)) == pytest.approx(2 / depth * 1e8 ** (2 / depth), rel=1e-4)


def test_numeric_bisection_on_the_trainer_matches_the_closed_form() -> None:
    """The edge of convergence found by bisection on train(), with no knowledge of the formula."""
    found = numeric_eta_max(1.0, 3, steps=500, rel_tol=0.02, start=16.0)
    assert found == pytest.approx(float(eta_max(1.0, 3)), rel=0.03)


@pytest.mark.parametrize(
    ("gamma", "depth"),
    [(1e-3, 2), (1e-3, 4), (0.1, 3), (10.0, 2), (10.0, 4), (1e3, 3)],
    ids=["lazy-L2", "lazy-L4", "mid-L3", "rich-L2", "rich-L4", "ultra-rich-L3"],
)
def test_trainer_converges_just_below_eta_max_and_not_just_above(gamma: float, depth: int) -> None:
    edge = float(eta_max(gamma, depth))
    assert converges(gamma, 0.97 * edge, depth, steps=800)
    assert not converges(gamma, 1.03 * edge, depth, steps=800)


def test_toy_config_uses_float64_below_the_threshold() -> None:
    assert toy_config(1e-3, 1e-6, 2).resolved_dtype == "float64"
    assert toy_config(1.0, 0.1, 2).validate().width == 1
