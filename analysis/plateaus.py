"""Plateaus and staircases in loss curves, and how the plateau length scales with gamma.

Method (all in log time, on the log loss, so that a decade of steps weighs the same early and late):

1. **Reduce.** Each curve is bucketed on a log-spaced step grid (:mod:`gammadb.analysis.downsample`,
   ``per_decade`` = 40 buckets a decade); a bucket keeps the mean of ln(loss) and its count.
2. **Smooth.** (:mod:`gammadb.analysis.smoothing`.) Local-linear regression with a Gaussian kernel in
   log10(step), weighted by the bucket counts (so every minibatch loss in the window counts once;
   local-linear so that a sloped stretch is not biased where the window is wide or one-sided), with
   bandwidth ``bandwidth`` = 0.05 decades (a factor 1.12 in time), widened where needed until the
   window holds ``min_samples`` = 16 logged steps. Why: a minibatch loss scatters by tens of percent
   around its mean; averaging >= 16 of them cuts that four-fold, and from step ~150 on the 0.05-decade
   window already holds hundreds of steps. A drop is smeared over about +-2 bandwidths = +-0.1
   decades, so its location stays well within the factor 1.3 (0.11 decades) the acceptance asks for.
   Early on (steps < ~100) the window must widen to collect 16 steps, so drops there are located less
   sharply. The smoothed curve is evaluated on a uniform grid of ``grid`` = 0.01 decades.
3. **Find drops.** The local log-log slope d log10 L / d log10 t of the smoothed curve. A drop is a
   stretch where it is steeper than ``-min_slope`` = -1 (faster than 1/t: SGD's power-law phases in
   these models decay more slowly than that, so only a genuine descent off a plateau qualifies),
   widened on both sides while the slope stays below ``-edge_slope`` = -0.25 (hysteresis: the drop's
   extent, hence its loss before and after, includes its shoulders). Two steep stretches are two
   drops only if the slope between them flattens above ``-min_slope / 2`` (the loss paused); the
   boundary between them is the flattest point. A drop counts only if it takes the loss at least
   ``min_drop`` = 0.2 decades (a factor 1.6) below everything before it: smoothed noise is ~0.01-0.03
   decades, and the recovery from a catapult spike is not a new step.
   Its **step** is the point of steepest descent; ``plateau_steps`` is the time from the end of the
   previous drop (or the first logged step) to the start of this one.
4. **Escape.** The first step where the smoothed loss has fallen ``escape_fraction`` = half way
   (in loss, not log loss) from its starting level to its final level; none when the loss never fell
   by ``min_drop`` decades overall.

The per-sweep scaling fits the plateau length (the escape step by default) against gamma as a power
law, along eta*(gamma) or eta_max(gamma) (the families of :mod:`gammadb.analysis.etas`: each gamma
at the grid eta ``analyze optimal-lr`` reports; eta_max is the better-defined choice when many etas
reach the same floor, as in the noise-free toy model), at a fixed eta, or over all runs. The toy
model's theory: plateau escape happens at tau = eta t / gamma ~ const, so along eta* ~ gamma^(2/L)
the plateau lasts ~ gamma^(1 - 2/L) steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis.downsample import bucketed_series
from gammadb.buckets import DEFAULT_PER_DECADE, bucket_frame
from gammadb.analysis.etas import group_columns, select_family, varying_columns
from gammadb.analysis.fits import power_law_regression
from gammadb.analysis.smoothing import LN10, MIN_SPAN_DECADES, smooth_log_curve
from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.metrics import LOSS

if TYPE_CHECKING:
    from gammadb.store import Store

MEASURES = ("escape_step", "plateau_end_step")


@dataclasses.dataclass(frozen=True)
class PlateauOptions:
    """Smoother and thresholds (units: decades of step for times, decades of loss for levels)."""

    per_decade: int = DEFAULT_PER_DECADE
    bandwidth: float = 0.05
    min_samples: int = 16
    grid: float = 0.01
    min_slope: float = 1.0
    edge_slope: float = 0.25
    min_drop: float = 0.2
    escape_fraction: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (self.bandwidth > 0, "bandwidth must be > 0 decades"),
            (self.min_samples >= 1, "min_samples must be >= 1"),
            (0 < self.grid <= 0.1, "grid must be in (0, 0.1] decades"),
            (self.min_slope > 0, "min_slope must be > 0"),
            (0 <= self.edge_slope <= self.min_slope, "edge_slope must be in [0, min_slope]"),
            (self.min_drop > 0, "min_drop must be > 0 decades"),
            (0 < self.escape_fraction < 1, "escape_fraction must be in (0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidSpecError(msg)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["smoother"] = "local-linear gaussian kernel in log10(step), count-weighted, widened to min_samples"
        return d


# ---------------------------------------------------------------------------------------- drops
@dataclasses.dataclass(frozen=True)
class Drop:
    step: int  # steepest descent of the smoothed log loss
    loss_before: float  # smoothed loss where the drop starts
    loss_after: float  # smoothed loss where it ends
    plateau_steps: int  # from the end of the previous drop (or the first step) to this drop's start
    start_step: int
    end_step: int


def find_drops(gx: np.ndarray, gy: np.ndarray, opts: PlateauOptions = PlateauOptions()) -> list[Drop]:
    """Drops of a smoothed curve: ``gx`` = log10 step on a uniform grid, ``gy`` = log10 loss."""
    if gx.size < 3:
        return []
    slope = np.gradient(gy, gx)
    core = slope < -opts.min_slope
    cores: list[list[int]] = []
    for i in np.nonzero(core)[0]:
        if cores and i == cores[-1][1] + 1:
            cores[-1][1] = int(i)
        else:
            cores.append([int(i), int(i)])
    # Two steep stretches are one drop unless the slope between them flattens to above
    # -min_slope / 2 (a shoulder: the loss paused, however briefly).
    merged: list[list[int]] = []
    for c in cores:
        if merged and float(np.max(slope[merged[-1][1] : c[0] + 1])) < -opts.min_slope / 2:
            merged[-1][1] = c[1]
        else:
            merged.append(c)
    regions: list[list[int]] = []
    for k, (a, b) in enumerate(merged):
        # widen while still falling faster than t^-edge_slope, but never past the flattest point
        # between this drop and its neighbours
        lo = 0 if k == 0 else merged[k - 1][1] + int(np.argmax(slope[merged[k - 1][1] : a + 1]))
        hi = gx.size - 1 if k == len(merged) - 1 else b + int(np.argmax(slope[b : merged[k + 1][0] + 1]))
        while a > lo and slope[a - 1] < -opts.edge_slope:
            a -= 1
        while b < hi and slope[b + 1] < -opts.edge_slope:
            b += 1
        regions.append([a, b])
    drops: list[Drop] = []
    prev_end_t = 10 ** gx[0]
    for a, b in regions:
        before_min = float(np.min(gy[: a + 1]))
        if before_min - gy[b] < opts.min_drop:
            continue
        k = a + int(np.argmin(slope[a : b + 1]))
        start_t, end_t = 10 ** gx[a], 10 ** gx[b]
        drops.append(Drop(
            step=int(round(10 ** gx[k])), loss_before=float(10 ** gy[a]), loss_after=float(10 ** gy[b]),
            plateau_steps=int(round(max(0.0, start_t - prev_end_t))),
            start_step=int(round(start_t)), end_step=int(round(end_t)),
        ))
        prev_end_t = end_t
    return drops


def escape_log_step(gx: np.ndarray, gy: np.ndarray, opts: PlateauOptions = PlateauOptions()) -> Optional[float]:
    """log10 of the first step where the smoothed loss is ``escape_fraction`` of the way down from
    its start to its end level (linear interpolation in log time); None if it never fell."""
    if gx.size < 2 or gy[0] - gy[-1] < opts.min_drop:
        return None
    start, final = 10 ** gy[0], 10 ** gy[-1]
    target = start - opts.escape_fraction * (start - final)
    loss = 10 ** gy
    below = np.nonzero(loss <= target)[0]
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(gx[0])
    l0, l1 = loss[i - 1], loss[i]
    frac = (l0 - target) / (l0 - l1) if l0 != l1 else 1.0
    return float(gx[i - 1] + frac * (gx[i] - gx[i - 1]))


@dataclasses.dataclass(frozen=True)
class CurvePlateaus:
    status: str  # ok | no_drop | diverged | too_short | no_data
    note: str
    first_step: Optional[int]
    last_step: Optional[int]
    plateau_end_step: Optional[int]
    escape_step: Optional[int]
    initial_loss: Optional[float]
    final_loss: Optional[float]
    drops: tuple[Drop, ...]


def curve_plateaus(buckets: pl.DataFrame, opts: PlateauOptions = PlateauOptions(),
                   diverged_at: Optional[int] = None) -> CurvePlateaus:
    """Plateaus and drops of one curve given its buckets (columns step, step_lo, step_hi, n, mean_log)."""
    b = buckets.filter(pl.col("mean_log").is_not_null() & pl.col("mean_log").is_finite()).sort("step")
    return _plateaus_of_arrays(*(b[c].to_numpy() for c in _CURVE_COLUMNS), opts, diverged_at)


_CURVE_COLUMNS = ("step", "mean_log", "n", "step_lo", "step_hi")


def _plateaus_of_arrays(step: np.ndarray, mean_log: np.ndarray, n: np.ndarray, step_lo: np.ndarray,
                        step_hi: np.ndarray, opts: PlateauOptions, diverged_at: Optional[int]) -> CurvePlateaus:
    """:func:`curve_plateaus` of one curve's buckets with a finite mean_log, sorted by step."""
    if step.size == 0:
        why = f"diverged at step {diverged_at} before any finite loss" if diverged_at is not None \
            else "no finite positive loss at step >= 1"
        return CurvePlateaus("diverged" if diverged_at is not None else "no_data", why,
                             None, None, None, None, None, None, ())
    log_t = np.log10(step)
    y = mean_log / LN10
    n = n.astype(float)
    first, last = int(step_lo[0]), int(step_hi[-1])
    n_steps = int(n.sum())
    if step.size < 3 or log_t[-1] - log_t[0] < MIN_SPAN_DECADES:
        note = (f"{n_steps} logged step{'s' if n_steps != 1 else ''} (steps {first}..{last}): need at least "
                f"{MIN_SPAN_DECADES} decades of steps to find a plateau")
        if diverged_at is not None:
            note += f"; diverged at step {diverged_at}"
        return CurvePlateaus("diverged" if diverged_at is not None else "too_short", note, first, last,
                             None, None, float(math.exp(mean_log[0])), float(math.exp(mean_log[-1])), ())
    gx, gy = smooth_log_curve(log_t, y, n, bandwidth=opts.bandwidth, min_samples=opts.min_samples,
                              grid=opts.grid)
    drops = tuple(find_drops(gx, gy, opts))
    esc = escape_log_step(gx, gy, opts)
    plateau_end = drops[0].start_step if drops else None
    if diverged_at is not None:
        status, note = "diverged", f"diverged at step {diverged_at}; analysed the {n_steps} finite steps before"
    elif drops:
        status, note = "ok", f"{len(drops)} drop{'s' if len(drops) > 1 else ''}"
    else:
        fell = gy[0] - gy[-1]
        status = "no_drop"
        note = (f"no drop: the smoothed loss fell {fell:.2f} decades over steps {first}..{last} without a "
                f"stretch steeper than t^-{opts.min_slope:g} taking it {opts.min_drop:g} decades lower")
    return CurvePlateaus(
        status, note, first, last, plateau_end, None if esc is None else int(round(10 ** esc)),
        _pow10(gy[0]), _pow10(gy[-1]), drops,
    )


def _pow10(x: float) -> float:
    """10^x as a float; inf (no warning) for a loss beyond float range, e.g. a run near divergence."""
    return math.inf if x > 308 else float(10.0 ** float(x))


# ---------------------------------------------------------------------------------------- per run
RUN_TABLE_SCHEMA = {
    "run_id": pl.Int64, "gamma": pl.Float64, "eta": pl.Float64, "seed": pl.Int64, "status": pl.String,
    "note": pl.String, "first_step": pl.Int64, "last_step": pl.Int64, "diverged_at": pl.Int64,
    "plateau_end_step": pl.Int64, "escape_step": pl.Int64, "initial_loss": pl.Float64,
    "final_loss": pl.Float64, "n_drops": pl.Int64,
}
DROP_TABLE_SCHEMA = {
    "run_id": pl.Int64, "drop": pl.Int64, "step": pl.Int64, "loss_before": pl.Float64,
    "loss_after": pl.Float64, "plateau_steps": pl.Int64, "start_step": pl.Int64, "end_step": pl.Int64,
}


def detect_plateaus(buckets: pl.DataFrame, runs: pl.DataFrame,
                    opts: PlateauOptions = PlateauOptions()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-run plateaus and drops.

    ``buckets``: :func:`gammadb.analysis.downsample.bucket_frame` of the loss; ``runs``: one row per run with
    run_id, gamma, eta, seed (and optionally diverged_at). Returns (runs table, drops table) with the
    columns of ``RUN_TABLE_SCHEMA`` and ``DROP_TABLE_SCHEMA``.
    """
    # one filter and sort for every curve, then each run's rows are a slice (no per-curve polars call)
    b = buckets.filter(pl.col("mean_log").is_not_null() & pl.col("mean_log").is_finite()).sort(
        "run_id", "step", maintain_order=True) if not buckets.is_empty() else None
    cols = [b[c].to_numpy() for c in _CURVE_COLUMNS] if b is not None else [np.empty(0)] * len(_CURVE_COLUMNS)
    spans: dict[int, tuple[int, int]] = {}
    if b is not None and b.height:
        rid_of = b["run_id"].to_numpy()
        starts = np.flatnonzero(np.concatenate(([True], rid_of[1:] != rid_of[:-1])))
        ends = np.append(starts[1:], rid_of.size)
        spans = {int(rid_of[a]): (int(a), int(e)) for a, e in zip(starts, ends)}
    run_rows, drop_rows = [], []
    for r in runs.iter_rows(named=True):
        rid = int(r["run_id"])
        div = r.get("diverged_at")
        a, e = spans.get(rid, (0, 0))
        res = _plateaus_of_arrays(*(c[a:e] for c in cols), opts, None if div is None else int(div))
        run_rows.append(dict(
            run_id=rid, gamma=r["gamma"], eta=r["eta"], seed=r["seed"], status=res.status, note=res.note,
            first_step=res.first_step, last_step=res.last_step, diverged_at=div,
            plateau_end_step=res.plateau_end_step, escape_step=res.escape_step,
            initial_loss=res.initial_loss, final_loss=res.final_loss, n_drops=len(res.drops),
        ))
        for k, d in enumerate(res.drops, start=1):
            drop_rows.append(dict(run_id=rid, drop=k, **dataclasses.asdict(d)))
    return (pl.DataFrame(run_rows, schema=RUN_TABLE_SCHEMA, orient="row") if run_rows
            else pl.DataFrame(schema=RUN_TABLE_SCHEMA),
            pl.DataFrame(drop_rows, schema=DROP_TABLE_SCHEMA) if drop_rows else pl.DataFrame(schema=DROP_TABLE_SCHEMA))


def plateaus_of_steps(steps: Sequence[int], losses: Sequence[float], opts: PlateauOptions = PlateauOptions(),
                      diverged_at: Optional[int] = None) -> CurvePlateaus:
    """Convenience: plateaus of one raw curve given as arrays (bucketed in polars)."""
    raw = pl.DataFrame({"run_id": 0, "step": np.asarray(steps, np.int64), "value": np.asarray(losses, float)})
    return curve_plateaus(bucket_frame(raw, opts.per_decade), opts, diverged_at)


# ---------------------------------------------------------------------------------------- scaling
def plateau_scaling(table: pl.DataFrame, runs: pl.DataFrame, *, along: str = "eta_star",
                    eta: Optional[float] = None, gamma_min: Optional[float] = 1.0,
                    measure: str = "escape_step", level: float = 0.95) -> dict[str, Any]:
    """Fit plateau length ~ gamma^p per group of comparable runs (see the module docstring).

    ``table``: :func:`detect_plateaus`' runs table; ``runs``: the sweep's runs frame (hyper-parameters,
    status, tail_mean_loss). Each run that escaped is one point; runs that never escaped within
    their budget are counted (``n_censored``) but not fitted.
    """
    if measure not in MEASURES:
        raise InvalidSpecError(f"unknown plateau measure {measure!r}: use one of {', '.join(MEASURES)}")
    keys = group_columns(runs)
    out: dict[str, Any] = {"measure": measure, "along": along, "eta": eta, "gamma_min": gamma_min,
                           "level": level, "method": "least squares in log10-log10 over runs, Student-t interval",
                           "groups": []}
    if runs.is_empty():
        return out
    shown_keys = varying_columns(runs, keys)
    for _, grp in runs.group_by(*keys, maintain_order=True):
        out["groups"].append(_scaling_group(grp, table, keys, shown_keys, along, eta, gamma_min, measure, level))
    return out


def _family(grp: pl.DataFrame, keys: Sequence[str], along: str, eta: Optional[float],
            gamma_min: Optional[float]) -> pl.DataFrame:
    """The runs of one group that its scaling fit looks at: the family along ``along`` among those at
    gamma >= ``gamma_min`` (AnalysisError or InvalidSpecError where there is none)."""
    if gamma_min is not None:
        grp = grp.filter(pl.col("gamma") >= gamma_min)
    return select_family(grp, along, eta, keys)


def scaling_run_ids(runs: pl.DataFrame, *, along: str = "eta_star", eta: Optional[float] = None,
                    gamma_min: Optional[float] = 1.0) -> list[int]:
    """The runs whose plateaus :func:`plateau_scaling` looks at (each group's family), in ``runs``' order."""
    if runs.is_empty():
        return []
    keys = group_columns(runs)
    wanted: set[int] = set()
    for _, grp in runs.group_by(*keys, maintain_order=True):
        try:
            wanted.update(_family(grp, keys, along, eta, gamma_min)["run_id"].to_list())
        except (AnalysisError, InvalidSpecError):
            continue
    return [r for r in runs["run_id"].to_list() if r in wanted]


def _scaling_group(grp: pl.DataFrame, table: pl.DataFrame, keys: Sequence[str], shown: Sequence[str],
                   along: str, eta: Optional[float], gamma_min: Optional[float], measure: str,
                   level: float) -> dict[str, Any]:
    first = grp.row(0, named=True)
    depth = first.get("depth")
    res: dict[str, Any] = {
        "group": {k: first[k] for k in shown}, "depth": depth,
        "theory_exponent": (1.0 - 2.0 / depth) if depth else None,
        "points": [], "exponent": None, "exponent_ci": None, "prefactor": None, "r2": None,
        "n_points": 0, "n_censored": 0, "reason": None,
    }
    try:
        fam = _family(grp, keys, along, eta, gamma_min)
    except (AnalysisError, InvalidSpecError) as exc:
        res["reason"] = str(exc)
        return res
    pts = fam.select("run_id").join(table, on="run_id", how="inner")
    ok = pts.filter(pl.col(measure).is_not_null() & (pl.col("status") != "diverged"))
    # never left the plateau within its budget (too-short or empty curves say nothing either way)
    res["n_censored"] = int(pts.filter(pl.col(measure).is_null() & pl.col("status").is_in(["ok", "no_drop"])).height)
    per_gamma = (ok.group_by("gamma", "eta").agg(  # geometric mean over seeds
        (10 ** pl.col(measure).cast(pl.Float64).log10().mean()).alias("plateau_steps"),
        pl.len().alias("n_seeds")).sort("gamma"))
    res["points"] = per_gamma.to_dicts()
    res["n_points"] = ok.height
    n_gamma = ok["gamma"].n_unique() if not ok.is_empty() else 0
    if n_gamma < 3:
        where = f"gamma >= {gamma_min:g}" if gamma_min is not None else "the sweep"
        res["reason"] = (f"{n_gamma} gamma value{'s' if n_gamma != 1 else ''} with an escaped plateau in "
                         f"{where} along {along}: a power law needs at least 3")
        return res
    fit = power_law_regression(ok[measure].cast(pl.Float64).to_numpy(), {"gamma": ok["gamma"].to_numpy()}, level=level)
    res.update(exponent=fit["exponents"]["gamma"], exponent_ci=fit["ci"]["gamma"], prefactor=fit["prefactor"],
               r2=fit["r2"])
    if fit["ci"]["gamma"] is None:
        res["reason"] = "as many points as coefficients: no residual to set an interval"
    return res


# ---------------------------------------------------------------------------------------- store edge
@dataclasses.dataclass(frozen=True)
class PlateauReport:
    sweep: str
    options: PlateauOptions
    runs: pl.DataFrame  # RUN_TABLE_SCHEMA
    drops: pl.DataFrame  # DROP_TABLE_SCHEMA
    scaling: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        drops_by_run: dict[int, list[dict[str, Any]]] = {}
        for d in self.drops.iter_rows(named=True):
            drops_by_run.setdefault(d["run_id"], []).append(
                {k: d[k] for k in ("step", "loss_before", "loss_after", "plateau_steps", "start_step", "end_step")})
        runs = []
        for r in self.runs.iter_rows(named=True):
            runs.append({**{k: r[k] for k in ("run_id", "gamma", "eta", "seed", "plateau_end_step",
                                              "escape_step", "n_drops")},
                         "drops": drops_by_run.get(r["run_id"], []),
                         **{k: r[k] for k in ("status", "note", "first_step", "last_step", "diverged_at",
                                              "initial_loss", "final_loss")}})
        return {"sweep": self.sweep, "runs": runs, "scaling": self.scaling, "options": self.options.to_dict()}


def analyze_plateaus(store: "Store", sweep: str, run_ids: Optional[Sequence[int]] = None, *,
                     opts: PlateauOptions = PlateauOptions(), along: str = "eta_star",
                     eta: Optional[float] = None, gamma_min: Optional[float] = 1.0,
                     measure: str = "escape_step", where: Sequence[str] = ()) -> PlateauReport:
    """Plateaus of every run of ``sweep`` (or of those ``run_ids`` and ``where`` select) and the
    per-sweep scaling; computed once per page within :func:`gammadb.analysis.shared.shared_reads`
    (the claims and the report's plateaus section ask for the same)."""
    from gammadb.analysis.shared import shared_result

    key = _plateaus_key(sweep, run_ids, opts, along, eta, gamma_min, measure, where)
    return shared_result(store, key, lambda: _analyze_plateaus(store, sweep, run_ids, opts, along, eta, gamma_min,
                                                               measure, where))


def _plateaus_key(sweep: str, run_ids: Optional[Sequence[int]], opts: PlateauOptions, along: str,
                  eta: Optional[float], gamma_min: Optional[float], measure: str, where: Sequence[str]) -> tuple:
    """The key :func:`analyze_plateaus` keeps its result under within one page's shared reads."""
    return ("analyze_plateaus", sweep, None if run_ids is None else tuple(int(r) for r in run_ids), opts, along,
            eta, gamma_min, measure, tuple(where))


def analyze_plateau_scaling(store: "Store", sweep: str, *, opts: PlateauOptions = PlateauOptions(),
                            along: str = "eta_star", eta: Optional[float] = None,
                            gamma_min: Optional[float] = 1.0, measure: str = "escape_step") -> dict[str, Any]:
    """``analyze_plateaus(...).scaling`` of the whole sweep, the same dict, from the plateaus of only
    the runs the fits look at (:func:`scaling_run_ids`: a few dozen of a sweep's hundreds; each run's
    plateaus are its own, so the others change nothing). Within
    :func:`gammadb.analysis.shared.shared_reads` a sweep's plateaus already analysed are used as they are."""
    from gammadb.analysis.shared import scope_of, shared_result

    scope = scope_of(store)
    if scope is not None and scope.has_result(_plateaus_key(sweep, None, opts, along, eta, gamma_min, measure, ())):
        return analyze_plateaus(store, sweep, opts=opts, along=along, eta=eta, gamma_min=gamma_min,
                                measure=measure).scaling
    key = ("analyze_plateau_scaling", sweep, opts, along, eta, gamma_min, measure)
    return shared_result(store, key, lambda: _analyze_plateau_scaling(store, sweep, opts, along, eta, gamma_min,
                                                                      measure))


def _analyze_plateau_scaling(store: "Store", sweep: str, opts: PlateauOptions, along: str, eta: Optional[float],
                             gamma_min: Optional[float], measure: str) -> dict[str, Any]:
    from gammadb.analysis.downsample import select_runs

    runs = select_runs(store, sweep)
    if runs.is_empty():
        raise AnalysisError(f"sweep {sweep!r} has no runs")
    fitted = runs.filter(pl.col("run_id").is_in(scaling_run_ids(runs, along=along, eta=eta, gamma_min=gamma_min)))
    buckets = bucketed_series(store, fitted["run_id"].to_list(), LOSS, opts.per_decade)
    table, _ = detect_plateaus(buckets, fitted, opts)
    return plateau_scaling(table, runs, along=along, eta=eta, gamma_min=gamma_min, measure=measure)


def _analyze_plateaus(store: "Store", sweep: str, run_ids: Optional[Sequence[int]], opts: PlateauOptions,
                      along: str, eta: Optional[float], gamma_min: Optional[float], measure: str,
                      where: Sequence[str]) -> PlateauReport:
    from gammadb.analysis.downsample import select_runs

    runs = select_runs(store, sweep, where, run_ids)
    if runs.is_empty():
        raise AnalysisError(f"sweep {sweep!r} has no runs" + (" that match the selection" if where or run_ids else ""))
    buckets = bucketed_series(store, runs["run_id"].to_list(), LOSS, opts.per_decade)
    table, drops = detect_plateaus(buckets, runs, opts)
    scaling = plateau_scaling(table, runs, along=along, eta=eta, gamma_min=gamma_min, measure=measure)
    return PlateauReport(sweep, opts, table, drops, scaling)
