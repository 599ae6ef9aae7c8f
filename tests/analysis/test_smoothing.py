"""Smoothing in log time (gammadb.analysis.smoothing), shared by plateaus and collapse."""

from __future__ import annotations

import numpy as np

from gammadb.analysis.smoothing import smooth_log_curve


def test_grid_and_bucket_positions() -> None:
    x = np.linspace(0.0, 2.0, 81)
    y = np.full_like(x, 3.0)
    gx, gy = smooth_log_curve(x, y, np.ones_like(x), grid=0.1)
    assert gx[0] == 0.0 and gx[-1] == 2.0 and np.allclose(np.diff(gx)[:-1], 0.1)
    assert np.allclose(gy, 3.0)
    bx, by = smooth_log_curve(x, y, np.ones_like(x), grid=None)
    assert np.array_equal(bx, x) and np.allclose(by, 3.0)


def test_counts_weight_the_buckets() -> None:
    # three buckets within a bandwidth: the middle one, holding 99 steps, pulls its smoothed value to itself
    x, y = np.array([0.0, 0.01, 0.02]), np.array([0.0, 1.0, 0.0])
    _, light = smooth_log_curve(x, y, np.array([1.0, 1.0, 1.0]), min_samples=1, grid=None)
    _, heavy = smooth_log_curve(x, y, np.array([1.0, 99.0, 1.0]), min_samples=1, grid=None)
    assert 0.3 < light[1] < 0.4 and heavy[1] > 0.97
    assert smooth_log_curve(np.array([]), np.array([]), np.array([]))[0].size == 0
