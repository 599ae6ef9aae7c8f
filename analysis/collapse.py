"""Trajectory collapse across gamma: do runs follow one curve once time is reparameterised?

Theory (docs/theory.md): at large gamma a run's trajectory depends on time only through
tau = eta t / gamma. For runs ``r`` and a reference ``ref`` that means L_r(t) = L_ref(s t) with
s = (eta_r / gamma_r) / (eta_ref / gamma_ref), i.e. s ~ gamma^-1 eta^+1.

Two measurements:

- **How well the curves collapse.** For each run, the RMS distance between its curve and the
  reference's (in log10 of the metric when it is positive, else the metric itself), averaged
  uniformly in log time over the window both curves cover: before (raw steps), after the theory's
  rescaling (tau), and after the fitted rescaling.
- **The time scale, fitted.** For each run the factor s with L_r(t) ~ L_ref(s t), by least squares in
  log time: both smoothed curves are turned into monotone envelopes (running min for a falling
  metric, running max for a rising one), each of ``levels`` values spread over the 10%..90% part of
  the range both curves cover is crossed once by each, and log10 s is the mean of
  log10 t_ref(level) - log10 t_run(level). Matching crossing times rather than values keeps a long
  flat plateau (which matches any shift) from deciding the fit. Then log10 s is fitted against
  log10 gamma (and log10 eta when it varies independently) with Student-t intervals, beside the
  theory exponents -1 and +1.

With ``tau_max`` the reference is cut at that tau (of its own clock) before both measurements, so
every window and the matched range of values end there: the claim is about early times, and
late-time convergence (e.g. the toy model's exponential approach to 0, whose rate is not a function
of tau) would otherwise dominate an RMS in log loss.

Curves are reduced and smoothed as in :mod:`gammadb.analysis.plateaus` (with
:mod:`gammadb.analysis.smoothing`: Gaussian in log10 step, 0.05 decades; per-step metrics widen it
to hold 16 logged steps, cadence metrics are only interpolated).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis.downsample import bucketed_series
from gammadb.buckets import DEFAULT_PER_DECADE
from gammadb.analysis.clock import step_at_tau, tau, tau_expr
from gammadb.analysis.etas import group_columns, select_family, varying_columns
from gammadb.analysis.fits import power_law_regression
from gammadb.analysis.smoothing import LN10, MIN_SPAN_DECADES, smooth_log_curve
from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.metrics import LOSS, MetricKey, MetricKind, kind_of
from gammadb.records import FINISHED

if TYPE_CHECKING:
    from gammadb.store import Store

LOSS_KEY = MetricKey(LOSS)
THEORY = {"tau": "eta*t/gamma", "exponent_gamma": -1.0, "exponent_eta": 1.0}
TRANSFORMS = ("auto", "log", "linear")


@dataclasses.dataclass(frozen=True)
class CollapseOptions:
    per_decade: int = DEFAULT_PER_DECADE
    bandwidth: float = 0.05  # decades of step
    min_samples: int = 16  # per-step metrics; cadence metrics use 1 (each point is one measurement)
    grid: float = 0.01  # decades of step
    levels: int = 25
    level_lo: float = 0.1  # fraction of the shared range, from its start
    level_hi: float = 0.9
    min_overlap: float = 0.3  # decades of time two curves must share for an RMS
    min_shared: float = 0.2  # the range both curves cover, as a fraction of the reference's range
    transform: str = "auto"  # auto: log10 when every value is > 0
    tau_max: Optional[float] = None  # compare and fit only up to this tau = eta t / gamma of the reference

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise InvalidSpecError(f"unknown transform {self.transform!r}: use one of {', '.join(TRANSFORMS)}")
        if not 0 <= self.level_lo < self.level_hi <= 1:
            raise InvalidSpecError("need 0 <= level_lo < level_hi <= 1")
        if self.levels < 2:
            raise InvalidSpecError("levels must be >= 2")
        if self.min_overlap <= 0:
            raise InvalidSpecError("min_overlap must be > 0 decades")
        if self.tau_max is not None and not self.tau_max > 0:
            raise InvalidSpecError("tau_max must be > 0")


@dataclasses.dataclass(frozen=True)
class Curve:
    """A smoothed curve on a uniform log10-step grid: ``x`` = log10 step, ``y`` = transformed value."""

    x: np.ndarray
    y: np.ndarray

    @property
    def span(self) -> float:
        return float(self.x[-1] - self.x[0]) if self.x.size else 0.0


# ---------------------------------------------------------------------------------------- pure parts
def rms_distance(run: Curve, ref: Curve, shift: float, *, grid: float = 0.01,
                 min_overlap: float = 0.3) -> Optional[float]:
    """RMS of y_run(x) - y_ref(x + shift) over the log-time window both cover (uniform in x);
    None when they share less than ``min_overlap`` decades.

    Values are compared within the range both curves reach: each is clipped to the higher of the two
    minima and the lower of the two maxima, so two runs that settle on different floors (float
    round-off at 1e-14 vs 1e-11, say) are not told apart by where their noise sits.
    """
    lo = max(run.x[0], ref.x[0] - shift)
    hi = min(run.x[-1], ref.x[-1] - shift)
    if hi - lo < min_overlap:
        return None
    xs = np.linspace(lo, hi, max(2, int(round((hi - lo) / grid)) + 1))
    a, b = np.interp(xs, run.x, run.y), np.interp(xs + shift, ref.x, ref.y)
    floor, ceil = max(a.min(), b.min()), min(a.max(), b.max())
    if floor < ceil:
        a, b = np.clip(a, floor, ceil), np.clip(b, floor, ceil)
    d = a - b
    return float(math.sqrt(float(np.mean(d * d))))


def _envelope(c: Curve, falling: bool) -> np.ndarray:
    return np.minimum.accumulate(c.y) if falling else np.maximum.accumulate(c.y)


def _crossings(x: np.ndarray, env: np.ndarray, levels: np.ndarray, falling: bool) -> np.ndarray:
    """First log time at which a monotone envelope reaches each level (interpolated)."""
    e = -env if falling else env  # non-decreasing
    lv = -levels if falling else levels
    i = np.searchsorted(e, lv, side="left")
    i = np.clip(i, 1, x.size - 1)
    e0, e1 = e[i - 1], e[i]
    frac = np.where(e1 > e0, (lv - e0) / np.where(e1 > e0, e1 - e0, 1.0), 1.0)
    return x[i - 1] + np.clip(frac, 0.0, 1.0) * (x[i] - x[i - 1])


def fit_time_scale(run: Curve, ref: Curve, *, falling: bool, levels: int = 25, level_lo: float = 0.1,
                   level_hi: float = 0.9, min_shared: float = 0.2) -> tuple[Optional[float], Optional[float], str]:
    """log10 s with run(t) ~ ref(s t), by matching level-crossing times (see the module docstring).

    Returns (log10 s, the spread of the per-level shifts in decades, a note); (None, None, why)
    when the range of values both curves cover is under ``min_shared`` of the reference's own range
    (a run still on its plateau, or a flat one, has nothing to align).
    """
    er, ef = _envelope(run, falling), _envelope(ref, falling)
    if falling:
        top, bottom = min(er[0], ef[0]), max(er[-1], ef[-1])
    else:
        top, bottom = max(er[0], ef[0]), min(er[-1], ef[-1])
    rng = (top - bottom) if falling else (bottom - top)
    ref_rng = abs(float(ef[-1] - ef[0]))
    if not np.isfinite(rng) or ref_rng <= 0 or rng < min_shared * ref_rng:
        shared = max(0.0, rng) / ref_rng if ref_rng > 0 else 0.0
        return None, None, (f"covers {100 * shared:.0f}% of the reference's range of values (< {100 * min_shared:.0f}%): "
                            "nothing to align (still on its plateau, or flat)")
    sign = -1.0 if falling else 1.0
    lv = top + sign * rng * np.linspace(level_lo, level_hi, levels)
    shifts = _crossings(ref.x, ef, lv, falling) - _crossings(run.x, er, lv, falling)
    return float(np.mean(shifts)), float(np.std(shifts)), f"{levels} levels over {rng:.3g} of shared range"


def theory_log_scale(gamma: float, eta: float, ref_gamma: float, ref_eta: float) -> float:
    return math.log10(tau(1.0, eta, gamma)) - math.log10(tau(1.0, ref_eta, ref_gamma))


def smooth_curves(buckets: pl.DataFrame, *, log_values: bool, opts: CollapseOptions,
                  min_samples: int) -> dict[int, Curve]:
    """Per run: the smoothed curve (runs whose finite part spans < 0.3 decades are left out)."""
    out: dict[int, Curve] = {}
    if buckets.is_empty():
        return out
    col = "mean_log" if log_values else "mean"
    for (rid,), g in buckets.filter(pl.col(col).is_not_null()).sort("step").group_by("run_id", maintain_order=True):
        if g.height < 3:
            continue
        lx = np.log10(g["step"].to_numpy())
        if lx[-1] - lx[0] < MIN_SPAN_DECADES:
            continue
        y = g[col].to_numpy() / (LN10 if log_values else 1.0)
        gx, gy = smooth_log_curve(lx, y, g["n"].to_numpy().astype(float), bandwidth=opts.bandwidth,
                                  min_samples=min_samples, grid=opts.grid)
        out[int(rid)] = Curve(gx, gy)
    return out


def pick_reference(runs: pl.DataFrame, curves: dict[int, Curve], reference: Optional[int]) -> int:
    """The given run, else the run with a curve nearest the median log gamma (ties: longest curve,
    then lowest seed): the median keeps the shifts to either side, and so the lost overlap, small."""
    usable = runs.filter(pl.col("run_id").is_in(list(curves)))
    if reference is not None:
        if reference not in curves:
            why = "is not in the family" if reference not in runs["run_id"].to_list() else "has too short a curve"
            raise InvalidSpecError(f"reference run {reference} {why}")
        return int(reference)
    lg = np.log10(usable["gamma"].to_numpy())
    med = float(np.median(lg))
    ranked = usable.with_columns(
        (pl.col("gamma").log10() - med).abs().round(9).alias("_d"),
        pl.col("run_id").map_elements(lambda r: -curves[int(r)].span, return_dtype=pl.Float64).alias("_len"),
    ).sort("_d", "_len", "seed", "run_id")
    return int(ranked["run_id"][0])


# ---------------------------------------------------------------------------------------- report
@dataclasses.dataclass(frozen=True)
class CollapseReport:
    sweep: str
    metric: MetricKey
    transform: str  # "log10" or "linear"
    reference: dict[str, Any]
    family: dict[str, Any]
    runs: pl.DataFrame  # one row per run: time scales and RMS distances
    rms_before: Optional[float]
    rms_after_theory: Optional[float]
    rms_after_fit: Optional[float]
    fit: dict[str, Any]
    curves: pl.DataFrame  # bucket means for charts: run_id, gamma, eta, seed, step, tau, t_fit, value, lo, hi
    options: CollapseOptions

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep, "metric": _metric_name(self.metric), "transform": self.transform,
            "reference": self.reference, "theory": dict(THEORY), "family": self.family,
            "rms_before": self.rms_before, "rms_after_theory": self.rms_after_theory,
            "rms_after_fit": self.rms_after_fit, "runs": self.runs.to_dicts(), "fit": self.fit,
            "options": dataclasses.asdict(self.options),
        }


def _metric_name(key: MetricKey) -> str:
    return key.name if key.layer == 0 else f"{key.name}.l{key.layer}"


def _rms_total(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(math.sqrt(sum(x * x for x in v) / len(v))) if v else None


def collapse_frame(runs: pl.DataFrame, buckets: pl.DataFrame, *, metric: MetricKey = LOSS_KEY,
                   opts: CollapseOptions = CollapseOptions(), reference: Optional[int] = None,
                   sweep: str = "", family: Optional[dict[str, Any]] = None) -> CollapseReport:
    """The collapse analysis of a family of runs (``runs``: run_id, gamma, eta, seed, diverged_at;
    ``buckets``: :func:`gammadb.analysis.downsample.bucket_frame` of the metric for those runs)."""
    family = dict(family or {})
    if runs.height < 2:
        raise AnalysisError(f"collapse needs at least 2 runs; the family has {runs.height}")
    finite = buckets.filter(pl.col("n") > 0)
    if opts.transform == "linear":
        log_values = False
    else:
        positive = finite.is_empty() or bool((finite["min"] > 0).all())
        if opts.transform == "log" and not positive:
            raise InvalidSpecError(f"{_metric_name(metric)} has values <= 0: use --transform linear")
        log_values = positive
    min_samples = opts.min_samples if kind_of(metric.name) == MetricKind.STEP else 1
    curves = smooth_curves(buckets, log_values=log_values, opts=opts, min_samples=min_samples)
    if len(curves) < 2:
        raise AnalysisError(
            f"{len(curves)} of {runs.height} runs have a {_metric_name(metric)} curve spanning "
            f"{MIN_SPAN_DECADES} decades of steps: collapse needs 2")
    ref_id = pick_reference(runs, curves, reference)
    ref = runs.filter(pl.col("run_id") == ref_id).row(0, named=True)
    ref_curve = curves[ref_id]
    if opts.tau_max is not None:
        # Early times only: the reference is cut at tau_max of its own clock, so every comparison
        # window (raw, tau or fitted time, each mapped onto the reference's time) and the range of
        # values the fit matches end there; the other runs keep their whole curves.
        t_cut = step_at_tau(opts.tau_max, ref["eta"], ref["gamma"])
        cut = smooth_curves(buckets.filter((pl.col("run_id") == ref_id) & (pl.col("step") <= t_cut)),
                            log_values=log_values, opts=opts, min_samples=min_samples)
        if ref_id not in cut:
            raise AnalysisError(f"the reference run {ref_id} has under {MIN_SPAN_DECADES} decades of steps "
                                f"before tau = {opts.tau_max:g} (step {t_cut:.0f}): raise --tau-max")
        ref_curve = cut[ref_id]
    falling = bool(ref_curve.y[-1] < ref_curve.y[0])
    rows = []
    for r in runs.sort("gamma", "eta", "seed").iter_rows(named=True):
        rid = int(r["run_id"])
        row: dict[str, Any] = dict(run_id=rid, gamma=r["gamma"], eta=r["eta"], seed=r["seed"],
                                   time_scale=None, time_scale_theory=None, rms_before=None,
                                   rms_after_theory=None, rms_after_fit=None, misfit_decades=None,
                                   status="ok", note="")
        c = curves.get(rid)
        if c is None:
            row["status"] = "skipped"
            div = r.get("diverged_at")
            row["note"] = (f"diverged at step {div}; " if div is not None else "") + \
                f"its finite curve spans < {MIN_SPAN_DECADES} decades of steps (or has < 3 buckets)"
            rows.append(row)
            continue
        lth = theory_log_scale(r["gamma"], r["eta"], ref["gamma"], ref["eta"])
        row["time_scale_theory"] = 10 ** lth
        if rid == ref_id:
            row.update(time_scale=1.0, rms_before=0.0, rms_after_theory=0.0, rms_after_fit=0.0,
                       misfit_decades=0.0, status="reference", note="the reference run")
            rows.append(row)
            continue
        ls, spread, note = fit_time_scale(c, ref_curve, falling=falling, levels=opts.levels,
                                          level_lo=opts.level_lo, level_hi=opts.level_hi,
                                          min_shared=opts.min_shared)
        kw = dict(grid=opts.grid, min_overlap=opts.min_overlap)
        row["rms_before"] = rms_distance(c, ref_curve, 0.0, **kw)
        row["rms_after_theory"] = rms_distance(c, ref_curve, lth, **kw)
        notes = []
        if ls is None:
            row["status"] = "no_fit"
            notes.append(note)
        else:
            row.update(time_scale=10 ** ls, misfit_decades=spread,
                       rms_after_fit=rms_distance(c, ref_curve, ls, **kw))
        if r.get("diverged_at") is not None:
            notes.append(f"diverged at step {r['diverged_at']}: its finite part is used")
        if row["rms_after_theory"] is None:
            notes.append(f"shares < {opts.min_overlap} decades of tau with the reference")
        row["note"] = "; ".join(notes)
        rows.append(row)
    table = pl.DataFrame(rows, schema={
        "run_id": pl.Int64, "gamma": pl.Float64, "eta": pl.Float64, "seed": pl.Int64,
        "time_scale": pl.Float64, "time_scale_theory": pl.Float64, "rms_before": pl.Float64,
        "rms_after_theory": pl.Float64, "rms_after_fit": pl.Float64, "misfit_decades": pl.Float64,
        "status": pl.String, "note": pl.String}, orient="row")
    others = table.filter(pl.col("status") == "ok")
    fit = _fit_scales(table)
    family["n_runs"] = runs.height
    curves_df = _chart_frame(runs, buckets, table, log_values)
    return CollapseReport(
        sweep=sweep, metric=metric, transform="log10" if log_values else "linear",
        reference={"run_id": ref_id, "gamma": ref["gamma"], "eta": ref["eta"], "seed": ref["seed"]},
        family=family,
        runs=table, rms_before=_rms_total(others["rms_before"].to_list()),
        rms_after_theory=_rms_total(others["rms_after_theory"].to_list()),
        rms_after_fit=_rms_total(others["rms_after_fit"].to_list()), fit=fit, curves=curves_df, options=opts,
    )


def _fit_scales(table: pl.DataFrame, level: float = 0.95) -> dict[str, Any]:
    pts = table.filter(pl.col("time_scale").is_not_null())
    fit: dict[str, Any] = {
        "exponent_gamma": None, "exponent_gamma_ci": None, "exponent_eta": None, "exponent_eta_ci": None,
        "prefactor": None, "r2": None, "n_runs": pts.height, "model": None, "level": level,
        "theory_exponent_gamma": THEORY["exponent_gamma"], "theory_exponent_eta": THEORY["exponent_eta"],
        "theory_exponent_gamma_along_family": None, "note": None,
    }
    n_gamma = pts["gamma"].n_unique() if pts.height else 0
    if n_gamma < 3:
        fit["note"] = f"{n_gamma} gamma value{'s' if n_gamma != 1 else ''} with a fitted time scale: a power law needs 3"
        return fit
    s, g, e = pts["time_scale"].to_numpy(), pts["gamma"].to_numpy(), pts["eta"].to_numpy()
    try:
        res = power_law_regression(s, {"gamma": g, "eta": e}, level=level)
        fit.update(exponent_gamma=res["exponents"]["gamma"], exponent_gamma_ci=res["ci"]["gamma"],
                   exponent_eta=res["exponents"]["eta"], exponent_eta_ci=res["ci"]["eta"],
                   prefactor=res["prefactor"], r2=res["r2"], model="log s = a + b log gamma + c log eta")
        return fit
    except AnalysisError:
        pass
    res = power_law_regression(s, {"gamma": g}, level=level)
    fit.update(exponent_gamma=res["exponents"]["gamma"], exponent_gamma_ci=res["ci"]["gamma"],
               prefactor=res["prefactor"], r2=res["r2"], model="log s = a + b log gamma")
    if np.unique(e).size == 1:
        fit["note"] = "eta is fixed in this family: only the gamma exponent is identifiable"
        fit["theory_exponent_gamma_along_family"] = THEORY["exponent_gamma"]
    else:
        q = power_law_regression(e, {"gamma": g})["exponents"]["gamma"]
        fit["theory_exponent_gamma_along_family"] = THEORY["exponent_gamma"] + THEORY["exponent_eta"] * q
        fit["note"] = (f"eta moves with gamma in this family (eta ~ gamma^{q:.2f}): exponent_gamma is the total "
                       f"exponent along it; theory -1 + {q:.2f} = {THEORY['exponent_gamma'] + q:.2f}")
    return fit


def _chart_frame(runs: pl.DataFrame, buckets: pl.DataFrame, table: pl.DataFrame, log_values: bool) -> pl.DataFrame:
    meta = runs.select("run_id", "gamma", "eta", "seed").join(
        table.select("run_id", "time_scale", "status"), on="run_id", how="left")
    value = pl.col("mean_log").exp() if log_values else pl.col("mean")
    return (
        buckets.join(meta, on="run_id", how="inner")
        .filter(pl.col("status") != "skipped")
        .select("run_id", "gamma", "eta", "seed", "step", tau_expr(),
                (pl.col("step") * pl.col("time_scale")).alias("t_fit"), value.alias("value"),
                pl.col("min").alias("lo"), pl.col("max").alias("hi"))
        .filter(pl.col("value").is_not_null())
        .sort("run_id", "step")
    )


# ---------------------------------------------------------------------------------------- store edge
def parse_metric(text: str) -> MetricKey:
    """``loss``, ``weight_change.l2`` (layer 2) or ``weight_change:2``."""
    from gammadb.metrics import metric_key

    t = text.strip()
    if not t:
        raise InvalidSpecError("empty metric name")
    if ":" in t:
        name, _, layer = t.partition(":")
        if not layer.isdigit():
            raise InvalidSpecError(f"bad metric {text!r}: use NAME, NAME.lK or NAME:K")
        return MetricKey(name, int(layer))
    return metric_key(t)


def missing_metric_message(store: "Store", metric: MetricKey, sweep: str) -> str:
    known = store.metric_keys()
    names = [_metric_name(MetricKey(n, int(l))) for n, l in known.iter_rows()]
    return (f"no finite values of {_metric_name(metric)} at step >= 1 in the selected runs of sweep {sweep!r}"
            + (f" (series in this store: {', '.join(names)})" if names else ""))


def analyze_collapse(store: "Store", sweep: str, *, metric: MetricKey | str = LOSS, along: str = "fixed",
                     eta: Optional[float] = None, gamma_min: Optional[float] = 1.0,
                     reference: Optional[int] = None, run_ids: Optional[Sequence[int]] = None,
                     where: Sequence[str] = (), opts: CollapseOptions = CollapseOptions()) -> CollapseReport:
    """Collapse of the runs of ``sweep`` (gamma >= ``gamma_min``) in one family: ``fixed`` eta
    (``eta``, default the eta shared by the most gammas), ``eta_star`` (each gamma at its best eta),
    or ``all``, among the runs ``where`` and ``run_ids`` select. Sweeps with several groups (depths,
    models...) use the largest; the others are named (select one with ``where``, e.g. "depth = 3")."""
    key = parse_metric(metric) if isinstance(metric, str) else metric
    from gammadb.analysis.downsample import select_runs

    runs = select_runs(store, sweep, where, run_ids)
    runs = runs.filter(pl.col("status").is_in(FINISHED))
    if gamma_min is not None:
        runs = runs.filter(pl.col("gamma") >= gamma_min)
    if runs.is_empty():
        raise AnalysisError(f"sweep {sweep!r} has no finished runs"
                            + (f" with gamma >= {gamma_min:g}" if gamma_min is not None else ""))
    keys = group_columns(runs)
    shown = varying_columns(runs, keys)
    groups = sorted(runs.group_by(*keys), key=lambda kg: -kg[1].height)
    grp = groups[0][1]
    fam = select_family(grp, along, eta, keys)
    first = grp.row(0, named=True)
    family = {"along": along, "eta": float(fam["eta"][0]) if along == "fixed" and fam.height else eta,
              "gamma_min": gamma_min, "group": {k: first[k] for k in shown},
              "other_groups": [{k: g.row(0, named=True)[k] for k in shown} for _, g in groups[1:]]}
    buckets = bucketed_series(store, fam["run_id"].to_list(), key, opts.per_decade)
    if buckets.is_empty():
        raise AnalysisError(missing_metric_message(store, key, sweep))
    return collapse_frame(fam, buckets, metric=key, opts=opts, reference=reference, sweep=sweep, family=family)
