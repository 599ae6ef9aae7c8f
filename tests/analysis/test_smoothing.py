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


def full_sort_reach(d: np.ndarray, n: np.ndarray, min_samples: float) -> np.ndarray:
    """The definition: per row, the distance at which the sorted window first holds min_samples."""
    order = np.argsort(d, axis=1)
    cum = np.cumsum(n[order], axis=1)
    enough = cum >= min_samples
    idx = np.where(enough.any(axis=1), enough.argmax(axis=1), d.shape[1] - 1)
    return np.take_along_axis(d, order, axis=1)[np.arange(d.shape[0]), idx]


def test_only_windows_short_of_min_samples_are_sorted() -> None:
    """A point whose +-bandwidth window already holds min_samples gets the bandwidth itself (what the
    clip makes of any shorter reach); the others get the full sort's reach, ties and all."""
    from gammadb.analysis.smoothing import _reach

    rng = np.random.default_rng(4)
    for trial in range(200):
        x = np.sort(np.round(rng.uniform(0, 3, int(rng.integers(1, 120))), 2))  # rounded: tied distances
        n = rng.integers(1, 20, x.size).astype(float) if trial % 3 else rng.uniform(0.1, 5, x.size)
        bw, ms = float(rng.choice([0.02, 0.05, 0.3])), float(rng.choice([1, 16, 60, 1e4]))
        d = np.abs(x[:, None] - x[None, :])
        want = np.clip(full_sort_reach(d, n, ms), bw, 0.5)
        got = _reach(d, n, bw, ms)
        assert np.array_equal(np.clip(got, bw, 0.5), want), trial
        if trial % 3:  # whole counts: the shortcut applies, rows with a full window are never sorted
            held = (d <= bw).astype(float) @ n
            assert np.all(got[held >= ms] == bw)
    x, n = np.linspace(0, 2, 201), np.ones(201)  # 11 points a window: all short of 16, all sorted
    d = np.abs(x[:, None] - x[None, :])
    assert np.array_equal(_reach(d, n, 0.05, 16), full_sort_reach(d, n, 16))
