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


def _direct(log_t: np.ndarray, y: np.ndarray, n: np.ndarray, bandwidth: float, min_samples: int,
            max_bandwidth: float) -> np.ndarray:
    """The fit at the bucket positions computed from scratch, as before the kernel was shared."""
    from gammadb.analysis.smoothing import _reach

    dx = log_t[None, :] - log_t[:, None]
    d = np.abs(dx)
    h = np.clip(_reach(d, n, bandwidth, min_samples), bandwidth, max_bandwidth)
    w = n[None, :] * np.exp(-0.5 * (d / h[:, None]) ** 2)
    wdx = w * dx
    s0, s1, s2 = w.sum(axis=1), wdx.sum(axis=1), (wdx * dx).sum(axis=1)
    t0, t1 = w @ y, wdx @ y
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
    return np.where(ok, (s2 * t0 - s1 * t1) / np.where(ok, det, 1.0), t0 / s0)


def test_runs_that_log_the_same_steps_share_one_kernel_bit_for_bit() -> None:
    from gammadb.analysis import smoothing

    rng = np.random.default_rng(3)
    log_t = np.sort(rng.uniform(0, 4, 120))
    n = rng.integers(1, 50, 120).astype(float)
    smoothing._kernel.cache_clear()
    for k in range(6):
        y = rng.normal(size=120).cumsum() * 0.05 - k
        _, got = smooth_log_curve(log_t, y, n, bandwidth=0.05, min_samples=16, grid=None)
        assert np.array_equal(got, _direct(log_t, y, n, 0.05, 16, 0.5))
    info = smoothing._kernel.cache_info()
    assert (info.misses, info.hits) == (1, 5)
    other_n = n.copy()
    other_n[7] += 1  # other counts: another kernel, not the cached one
    y = rng.normal(size=120)
    assert np.array_equal(smooth_log_curve(log_t, y, other_n, grid=None)[1], _direct(log_t, y, other_n, 0.05, 16, 0.5))
