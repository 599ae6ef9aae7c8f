"""Power-law fits: y = A x^k by least squares in log-log space with bootstrap intervals, y = A prod x_k^b_k
over several regressors with Student-t intervals, the offset law y = a x^-alpha + c (scipy), and a
smoothly broken power law (variable projection in numpy).

Every fit reports how many points it used and, when it cannot be made, a null estimate with a
reason; nothing here invents a number from fewer points than a fit needs.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis._common import none_if_nan, percentile_ci
from gammadb.errors import AnalysisError, InvalidSpecError

MIN_POINTS = 3  # a power law through 2 points has no residual: it says nothing about the law
MIN_POINTS_BROKEN = 5  # 4 parameters + 1 degree of freedom
DEFAULT_BOOT = 1000
NO_BREAK = 0.05  # slopes closer than this: the "broken" law is one power law and its knee means nothing
MAX_SLOPE = 10.0  # a broken power law's slopes are searched within +-this


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x^exponent, fitted as log10 y = log10 prefactor + exponent log10 x."""

    exponent: Optional[float]
    exponent_ci: Optional[tuple[float, float]]
    prefactor: Optional[float]
    r2_log: Optional[float]
    n_points: int
    x_range: Optional[tuple[float, float]]
    reason: Optional[str] = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.exponent is None or self.prefactor is None:
            return np.full(np.shape(x), np.nan)
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent


@dataclasses.dataclass(frozen=True)
class OffsetLawFit:
    """y = a x^-alpha + c (a loss curve that levels off at c)."""

    a: Optional[float]
    alpha: Optional[float]
    alpha_ci: Optional[tuple[float, float]]
    c: Optional[float]
    c_ci: Optional[tuple[float, float]]
    r2: Optional[float]
    n_points: int
    reason: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class BrokenPowerLaw:
    """y = A (x/x_b)^s1 (1 + x/x_b)^(s2 - s1): slope s1 well below the knee x_b, s2 well above.

    The smoothness is fixed at one decade-wide bend: the form that 2/lambda* of the deep linear toy
    model takes exactly (docs/theory.md), and one parameter fewer to pin down from a sparse gamma grid.
    """

    slope_small: Optional[float]
    slope_large: Optional[float]
    knee: Optional[float]
    prefactor: Optional[float]
    n_points: int
    reason: Optional[str] = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.knee is None:
            return np.full(np.shape(x), np.nan)
        return 10 ** _broken_log10(np.log10(np.asarray(x, dtype=float)),
                                   math.log10(self.prefactor), self.slope_small, self.slope_large,
                                   math.log10(self.knee))


# ---------------------------------------------------------------------- log-log least squares
def loglog_slopes(lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each row of ``ly`` (B, n) against ``lx`` (B, n) or (n,),
    ignoring NaN entries; NaN where a row has fewer than two distinct x."""
    ly = np.atleast_2d(np.asarray(ly, dtype=float))
    lx = np.broadcast_to(np.asarray(lx, dtype=float), ly.shape)
    m = np.isfinite(ly) & np.isfinite(lx)
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.where(m, lx, 0.0).sum(axis=1) / n
        ym = np.where(m, ly, 0.0).sum(axis=1) / n
        dx = np.where(m, lx - xm[:, None], 0.0)
        dy = np.where(m, ly - ym[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = np.where(sxx > 1e-12, (dx * dy).sum(axis=1) / sxx, np.nan)
    return slope, ym - slope * xm


def power_law(x: Any, y: Any, *, y_boot: Optional[np.ndarray] = None, n_boot: int = DEFAULT_BOOT,
              seed: int = 0, what: str = "points") -> PowerLawFit:
    """Fit y = A x^k on the points with x > 0 and y > 0 (both finite).

    The interval on k is a bootstrap: each replicate resamples the points (pairs) and, when
    ``y_boot`` (shape (n_boot, n)) is given, takes replicate b's values of y (e.g. from a bootstrap
    over seeds), so it carries both the scatter about the law and the per-point uncertainty.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n_distinct = len(np.unique(x[keep]))
    if n_distinct < MIN_POINTS:
        return PowerLawFit(None, None, None, None, int(keep.sum()),
                           (float(x[keep].min()), float(x[keep].max())) if keep.any() else None,
                           f"{n_distinct} distinct x value(s) with a usable {what} (need >= {MIN_POINTS})")
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    slope, icpt = (float(v[0]) for v in loglog_slopes(lx, ly))
    resid = ly - (icpt + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else None

    rng = np.random.default_rng(seed)
    n = lx.size
    idx = rng.integers(0, n, size=(n_boot, n))
    if y_boot is not None:
        yb = np.asarray(y_boot, dtype=float)[:n_boot][:, keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            ly_b = np.where(yb > 0, np.log10(np.where(yb > 0, yb, 1.0)), np.nan)
        ly_b = np.take_along_axis(ly_b, idx, axis=1)
    else:
        ly_b = ly[idx]
    slopes, _ = loglog_slopes(lx[idx], ly_b)
    return PowerLawFit(slope, percentile_ci(slopes), 10**icpt, r2, int(n),
                       (float(x[keep].min()), float(x[keep].max())))


# ---------------------------------------------------------------------- Student t
def t_quantile(dof: int, p: float) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom (0 < p < 1), to about 1e-10
    relative: P(|T| > t) = I_x(dof/2, 1/2) at x = dof / (dof + t^2) (the regularized incomplete
    beta), solved for x by bisection. Pure Python: the fits' intervals need no scipy (0.5 s to import)."""
    if dof < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"t quantile needs dof >= 1 and 0 < p < 1 (got {dof}, {p})")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(dof, 1.0 - p)
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    tail = 2.0 * (1.0 - p)  # P(|T| > t) = I_x(a, b), decreasing in t, increasing in x
    a, b = dof / 2.0, 0.5
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-16 * max(hi, 1e-300):
            break
    x = 0.5 * (lo + hi)
    return math.sqrt(dof * (1.0 - x) / x)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b
    return front * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


# ---------------------------------------------------------------------- several regressors
def power_law_regression(y: Sequence[float], regressors: Mapping[str, Sequence[float]], *,
                         level: float = 0.95) -> dict[str, Any]:
    """y = A prod_k x_k^b_k over several regressors: least squares of log10 y = a + sum_k b_k log10 x_k,
    with Student-t intervals on each b_k (unlike :func:`power_law`: one x, bootstrap interval).

    Returns ``{"exponents": {k: b_k}, "ci": {k: [lo, hi]}, "prefactor": 10^a, "r2", "n", "dof"}``; the
    intervals are null when there is no residual degree of freedom. Raises AnalysisError for
    non-positive data or regressors that do not vary independently (e.g. eta fixed, or eta a
    function of gamma).
    """
    yv = np.asarray(y, float)
    names = list(regressors)
    xs = [np.asarray(regressors[k], float) for k in names]
    if yv.size == 0 or any(x.size != yv.size for x in xs):
        raise AnalysisError("power-law fit: no points, or regressors of unequal length")
    if np.any(~np.isfinite(yv)) or np.any(yv <= 0) or any(np.any(~np.isfinite(x)) or np.any(x <= 0) for x in xs):
        raise AnalysisError("power-law fit needs finite positive values")
    X = np.column_stack([np.ones(yv.size)] + [np.log10(x) for x in xs])
    Y = np.log10(yv)
    if yv.size < X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        raise AnalysisError(
            f"power-law fit on {', '.join(names)}: {yv.size} points do not pin down {X.shape[1]} coefficients "
            "(a regressor is constant or varies in lock-step with another)")
    coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ coef
    dof = yv.size - X.shape[1]
    ss_tot = float(np.sum((Y - Y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    ci: dict[str, Optional[list[float]]] = {}
    if dof > 0:
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.inv(X.T @ X)
        t = t_quantile(dof, 0.5 + level / 2)
        for j, k in enumerate(names, start=1):
            half = t * math.sqrt(max(cov[j, j], 0.0))
            ci[k] = [float(coef[j] - half), float(coef[j] + half)]
    else:
        ci = {k: None for k in names}
    return {"exponents": {k: float(coef[j]) for j, k in enumerate(names, start=1)}, "ci": ci,
            "prefactor": float(10 ** coef[0]), "r2": r2, "n": int(yv.size), "dof": int(dof), "level": level}


# ---------------------------------------------------------------------- offset law
def offset_law(x: Any, y: Any, *, n_boot: int = 200, seed: int = 0) -> OffsetLawFit:
    """Fit y = a x^-alpha + c by nonlinear least squares (scipy), with bootstrap intervals (pairs)
    on alpha and c. Needs x > 0 and at least 4 points (3 parameters + 1)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 4:
        return OffsetLawFit(None, None, None, None, None, None, int(x.size),
                            f"{len(np.unique(x))} distinct x value(s) (need >= 4 for a, alpha and c)")

    def model(xx: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
        return a * xx ** (-alpha) + c

    def fit(xx: np.ndarray, yy: np.ndarray, p0: tuple[float, float, float]) -> Optional[np.ndarray]:
        try:
            with warnings.catch_warnings():  # no covariance is fine: the interval comes from the bootstrap
                warnings.simplefilter("ignore", OptimizeWarning)
                p, _ = curve_fit(model, xx, yy, p0=p0, maxfev=5000)
        except (RuntimeError, ValueError, FloatingPointError):
            return None
        return p if np.all(np.isfinite(p)) else None

    # Start from a pure power law fitted to y - c0, c0 just below the smallest y.
    c0 = float(y.min()) - 0.05 * float(np.ptp(y) or abs(y.min()) or 1.0)
    start = power_law(x, y - c0, n_boot=1)
    alpha0 = -start.exponent if start.exponent is not None else 1.0
    a0 = start.prefactor if start.prefactor is not None else float(np.ptp(y) or 1.0)
    p = None
    with np.errstate(all="ignore"):
        for guess in ((a0, alpha0, c0), (float(np.ptp(y) or 1.0), 1.0, float(y.min())), (1.0, 0.5, 0.0)):
            p = fit(x, y, guess)
            if p is not None:
                break
    if p is None:
        return OffsetLawFit(None, None, None, None, None, None, int(x.size), "the offset law did not converge")
    resid = y - model(x, *p)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else None
    rng = np.random.default_rng(seed)
    boots = []
    with np.errstate(all="ignore"):
        for _ in range(n_boot):
            i = rng.integers(0, x.size, x.size)
            if len(np.unique(x[i])) < 4:
                continue
            q = fit(x[i], y[i], tuple(p))
            if q is not None:
                boots.append(q)
    b = np.array(boots) if boots else np.full((0, 3), np.nan)
    return OffsetLawFit(float(p[0]), float(p[1]), percentile_ci(b[:, 1]), float(p[2]),
                        percentile_ci(b[:, 2]), r2, int(x.size))


# ---------------------------------------------------------------------- broken power law
def _broken_log10(u: np.ndarray, log_a: float, s1: float, s2: float, ub: float) -> np.ndarray:
    z = u - ub
    return log_a + s1 * z + (s2 - s1) * np.logaddexp(0.0, z * math.log(10)) / math.log(10)


def broken_power_law(x: Any, y: Any) -> BrokenPowerLaw:
    """Fit a smoothly broken power law in log-log space by variable projection: at a given knee the
    model is linear in (log A, s1, s2) and solved by least squares, so only the knee is searched, over
    the data's x range: 256 knees on a grid, then golden-section search around the best to 1e-10
    decades, so no start value is needed. Slopes beyond +-10 are not considered (a knee that would
    need them is skipped). On 300 random eta* curves its residual was never above that of scipy's
    least squares from five starts, which it replaced (tests/analysis/test_fits.py)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    u, v = np.log10(x[keep]), np.log10(y[keep])
    n = int(len(np.unique(u)))
    if n < MIN_POINTS_BROKEN:
        return BrokenPowerLaw(None, None, None, None, n,
                              f"{n} distinct gamma value(s) (a broken power law needs >= {MIN_POINTS_BROKEN})")
    lo, hi = float(u.min()), float(u.max())

    def fit_at(ub: float) -> tuple[float, np.ndarray]:
        z = u - ub
        soft = np.logaddexp(0.0, z * math.log(10)) / math.log(10)  # log10(1 + 10^z)
        design = np.column_stack([np.ones_like(u), z - soft, soft])  # log A, s1, s2
        coef, *_ = np.linalg.lstsq(design, v, rcond=None)
        if not np.all(np.isfinite(coef)) or np.any(np.abs(coef[1:]) > MAX_SLOPE):
            return math.inf, coef
        r = design @ coef - v
        return float(r @ r), coef

    grid = np.linspace(lo, hi, 256)
    costs = np.array([fit_at(float(g))[0] for g in grid])
    if not np.isfinite(costs).any():
        return BrokenPowerLaw(None, None, None, None, n, "the broken power law did not converge")
    i = int(np.argmin(costs))
    a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = fit_at(c)[0], fit_at(d)[0]
    while b - a > 1e-10:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = fit_at(c)[0]
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = fit_at(d)[0]
    candidates = [(costs[i], float(grid[i])), (fc, c), (fd, d)]
    cost, ub = min(candidates, key=lambda t: t[0])
    la, a1, a2 = (float(p) for p in fit_at(ub)[1])
    reason = None
    span = hi - lo
    if abs(a2 - a1) < NO_BREAK:
        reason = f"the two slopes agree ({a1:.3g} vs {a2:.3g}): one power law, the knee is arbitrary"
    elif ub - lo < 0.02 * span or hi - ub < 0.02 * span:
        reason = "the knee sits at the edge of the gamma range: no break is resolved inside it"
    return BrokenPowerLaw(a1, a2, 10**ub, 10**la, n, reason)


AIC_MARGIN = 2.0  # an AIC lower by more than this is the conventional "meaningfully better"


def aic(residuals: np.ndarray, k: int) -> float:
    """Akaike's criterion of a least-squares fit with ``k`` parameters: n ln(RSS / n) + 2k."""
    r = np.asarray(residuals, dtype=float)
    n = r.size
    rss = max(float((r * r).sum()), 1e-300)  # a perfect fit: very good, not -inf
    return n * math.log(rss / n) + 2 * k


def broken_beats_lines(x: Any, y: Any, bpl: BrokenPowerLaw,
                       lines: Sequence[tuple[float, float, float, float]]) -> tuple[bool, str]:
    """Does the broken power law fit the points better than the straight lines (prefactor, exponent,
    x_lo, x_hi) fitted on either side, by AIC (lower by more than AIC_MARGIN) on the points the lines
    cover (log10 residuals; 4 parameters against 2 per line)? Returns (better, the sentence that says so)."""
    if bpl.knee is None or not lines:
        return False, bpl.reason or "no broken power law or no straight-line fit to compare it with"
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    r_lines, r_broken = [], []
    for a, k, lo, hi in lines:
        m = ok & (x >= lo * (1 - 1e-9)) & (x <= hi * (1 + 1e-9))
        r_lines.append(np.log10(y[m]) - np.log10(a * x[m] ** k))
        r_broken.append(np.log10(y[m]) - np.log10(bpl.predict(x[m])))
    rl, rb = np.concatenate(r_lines), np.concatenate(r_broken)
    if rl.size <= 4:
        return False, f"{rl.size} points under the straight lines: too few to compare by AIC"
    a_lines, a_broken = aic(rl, 2 * len(lines)), aic(rb, 4)
    what = "two straight lines" if len(lines) == 2 else "one straight line"
    if a_broken < a_lines - AIC_MARGIN:
        return True, f"AIC {a_broken:.1f} against {a_lines:.1f} for {what}: the break is supported"
    return False, (f"not shown: it fits no better than {what} (AIC {a_broken:.1f} against {a_lines:.1f}; "
                   f"shown only when lower by more than {AIC_MARGIN:g}), so its slopes add nothing to the fits above")


# ---------------------------------------------------------------------- columns of a frame
@dataclasses.dataclass(frozen=True)
class ColumnFit:
    x: str
    y: str
    n_rows: int
    n_dropped: int
    power_law: PowerLawFit
    offset_law: OffsetLawFit

    def to_json(self) -> dict[str, Any]:
        p, o = self.power_law, self.offset_law
        return {
            "x": self.x, "y": self.y, "n_rows": self.n_rows, "n_dropped": self.n_dropped,
            "power_law": {
                "exponent": none_if_nan(p.exponent), "exponent_ci": _pair(p.exponent_ci),
                "prefactor": none_if_nan(p.prefactor), "r2_log": none_if_nan(p.r2_log),
                "x_range": _pair(p.x_range), "n_points": p.n_points, "reason": p.reason,
            },
            "offset_law": {
                "a": none_if_nan(o.a), "alpha": none_if_nan(o.alpha), "alpha_ci": _pair(o.alpha_ci),
                "c": none_if_nan(o.c), "c_ci": _pair(o.c_ci), "r2": none_if_nan(o.r2),
                "n_points": o.n_points, "reason": o.reason,
            },
        }

    def table(self) -> pl.DataFrame:
        p, o = self.power_law, self.offset_law
        return pl.DataFrame([
            {"law": "y = A x^k", "exponent": p.exponent,
             "ci_lo": p.exponent_ci[0] if p.exponent_ci else None,
             "ci_hi": p.exponent_ci[1] if p.exponent_ci else None,
             "prefactor": p.prefactor, "offset": None, "r2": p.r2_log, "n_points": p.n_points,
             "reason": p.reason},
            {"law": "y = a x^-alpha + c", "exponent": -o.alpha if o.alpha is not None else None,
             "ci_lo": -o.alpha_ci[1] if o.alpha_ci else None, "ci_hi": -o.alpha_ci[0] if o.alpha_ci else None,
             "prefactor": o.a, "offset": o.c, "r2": o.r2, "n_points": o.n_points, "reason": o.reason},
        ], schema={"law": pl.String, "exponent": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64,
                   "prefactor": pl.Float64, "offset": pl.Float64, "r2": pl.Float64, "n_points": pl.Int64,
                   "reason": pl.String})


def fit_columns(df: pl.DataFrame, x: str, y: str, *, xmin: Optional[float] = None,
                xmax: Optional[float] = None, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> ColumnFit:
    """Fit y against x (two numeric columns of ``df``) on xmin <= x <= xmax: a power law in log
    space and the offset law. Rows with a missing, non-finite or (for the log fit) non-positive value
    are dropped and counted."""
    for c in (x, y):
        if c not in df.columns:
            raise InvalidSpecError(f"no column {c!r} in the data (columns: {', '.join(df.columns)})")
        if not df.schema[c].is_numeric():
            raise InvalidSpecError(f"column {c!r} is {df.schema[c]}, not numeric")
    if xmin is not None and xmax is not None and xmin >= xmax:
        raise InvalidSpecError(f"--xmin ({xmin}) must be below --xmax ({xmax})")
    d = df.select(pl.col(x).cast(pl.Float64).alias("x"), pl.col(y).cast(pl.Float64).alias("y"))
    if xmin is not None:
        d = d.filter(pl.col("x") >= xmin)
    if xmax is not None:
        d = d.filter(pl.col("x") <= xmax)
    n_rows = d.height
    if n_rows == 0:
        raise AnalysisError(f"no rows with {x} in the requested range: nothing to fit")
    xs, ys = d["x"].to_numpy(), d["y"].to_numpy()
    usable = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    pl_fit = power_law(xs, ys, n_boot=n_boot, seed=seed, what=y)
    off = offset_law(xs, ys, seed=seed)
    return ColumnFit(x, y, n_rows, int(n_rows - usable.sum()), pl_fit, off)


def _pair(p: Optional[tuple[float, float]]) -> Optional[list[float]]:
    return None if p is None else [float(p[0]), float(p[1])]
