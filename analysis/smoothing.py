"""Smoothing of one curve in log time: a count-weighted, Gaussian-kernel local-linear fit in
log10(step), resampled on a uniform log10-step grid (the curve analyses' common first step: plateaus
and trajectory collapse both smooth this way).

Units: positions and widths in decades of step (log10); values as given (the callers pass log10 of
the loss, or the metric itself).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

LN10 = math.log(10.0)
#: The shortest curve (decades of logged steps) the curve analyses smooth: a shorter one cannot
#: show a plateau followed by a drop, nor a time scale.
MIN_SPAN_DECADES = 0.3


def smooth_log_curve(log_t: np.ndarray, y: np.ndarray, n: np.ndarray, *, bandwidth: float = 0.05,
                     min_samples: int = 16, grid: Optional[float] = 0.01,
                     max_bandwidth: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-smooth bucket means ``y`` at ``log_t`` (weights ``n``) and resample on a uniform grid.

    Each bucket's value becomes a count-weighted, Gaussian-kernel local-linear fit with bandwidth
    max(``bandwidth``, the half-width that holds ``min_samples`` samples), capped at
    ``max_bandwidth``; the smoothed values are then linearly interpolated onto a grid of spacing
    ``grid`` decades (``None``: return them at the bucket positions).
    """
    log_t = np.asarray(log_t, float)
    y = np.asarray(y, float)
    n = np.asarray(n, float)
    if log_t.size == 0:
        return log_t, y
    w, wdx, s0, s1, s2, det, ok = _kernel(log_t.tobytes(), n.tobytes(), float(bandwidth), int(min_samples),
                                          float(max_bandwidth))
    t0, t1 = w @ y, wdx @ y
    smooth = np.where(ok, (s2 * t0 - s1 * t1) / np.where(ok, det, 1.0), t0 / s0)
    if grid is None or log_t.size == 1:
        return log_t, smooth
    gx = np.arange(log_t[0], log_t[-1], grid)
    if gx.size == 0 or gx[-1] < log_t[-1]:
        gx = np.append(gx, log_t[-1])
    return gx, np.interp(gx, log_t, smooth)


@functools.lru_cache(maxsize=16)
def _kernel(log_t_bytes: bytes, n_bytes: bytes, bandwidth: float, min_samples: int,
            max_bandwidth: float) -> tuple[np.ndarray, ...]:
    """The local-linear fit's weights and moments for bucket positions and counts (float64 bytes):
    they depend on neither the values nor the run, so the runs of a sweep that log the same steps
    (nearly all of them) share one (read-only arrays: the cache hands the same ones to every caller)."""
    log_t = np.frombuffer(log_t_bytes, dtype=float)
    n = np.frombuffer(n_bytes, dtype=float)
    dx = log_t[None, :] - log_t[:, None]
    d = np.abs(dx)
    h = np.clip(_reach(d, n, bandwidth, min_samples), bandwidth, max_bandwidth)
    w = n[None, :] * np.exp(-0.5 * (d / h[:, None]) ** 2)
    # Local-linear (not Nadaraya-Watson) kernel regression: a straight stretch of the log-log curve
    # comes out unbiased even where the window is wide or one-sided (early steps, the curve's ends).
    wdx = w * dx
    s0, s1, s2 = w.sum(axis=1), wdx.sum(axis=1), (wdx * dx).sum(axis=1)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
    out = (w, wdx, s0, s1, s2, det, ok)
    for a in out:
        a.flags.writeable = False
    return out


def _reach(d: np.ndarray, n: np.ndarray, bandwidth: float, min_samples: int) -> np.ndarray:
    """Per point (row of the distances ``d``), the smallest distance whose window holds
    ``min_samples`` of the weights ``n`` (the largest distance where none does), or ``bandwidth``
    where that distance is no more than ``bandwidth`` (the caller clips it up to ``bandwidth``
    anyway). Only the points whose +-bandwidth window falls short are sorted: with whole,
    non-negative counts the window's total decides exactly which those are."""
    rows = np.arange(d.shape[0])
    if min_samples > 0 and np.isfinite(d).all() and (n >= 0).all() and (n == np.floor(n)).all() and n.sum() < 2.0**52:
        held = (d <= bandwidth).astype(float) @ n  # whole numbers: exact in any order
        rows = np.flatnonzero(held < min_samples)
    reach = np.full(d.shape[0], float(bandwidth))
    if rows.size:
        sub = d[rows]
        order = np.argsort(sub, axis=1)
        d_sorted = np.take_along_axis(sub, order, axis=1)
        cum = np.cumsum(n[order], axis=1)
        enough = cum >= min_samples
        idx = np.where(enough.any(axis=1), enough.argmax(axis=1), d.shape[1] - 1)
        reach[rows] = d_sorted[np.arange(rows.size), idx]
    return reach
