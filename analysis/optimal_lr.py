"""Where SGD trains best and where it stops training, per gamma: eta*, eta_max, eta_stable, eta_conv,
eta_min, and power laws of eta*, eta_max and eta_conv against gamma (docs/theory.md claim 1:
eta* ~ gamma^2 for gamma << 1, ~ gamma^(2/L) for gamma >> 1).

Definitions (per group of runs sharing everything but gamma, eta and seed; per gamma; seeds
averaged; a run with a NaN/inf at any step is "diverged" and counts as infinitely bad). They and their
thresholds live in :mod:`gammadb.analysis.etas`, which the run families of the curve analyses share:

- the *loss at the budget* used to judge training is the tail-mean training loss (the last 10% of the
  steps up to the budget), which smooths the per-batch noise of the online loss; the criterion
  (``--criterion``) only chooses which loss eta* minimises; ``test`` (the test loss at the last
  evaluation at or before the budget: theta_T for a full run) is the paper's, which reads eta* off
  heat maps of the end-of-training test loss;
- eta_max: the largest eta where no seed diverged and loss at the budget <= converged x initial loss;
- eta_stable: the largest eta where no seed diverged;
- eta_conv: the authors' largest convergent eta, their scan rule replayed on the stored etas (a
  divergence below a convergent eta moves it below that divergence), with the sweep's
  ``decades_below`` as the scan window (the authors' 3 when the spec has none);
- eta*: argmin over eta of the seed-mean criterion, refined by a parabola in log10(eta) through the
  best grid point and its two neighbours (log of the loss when positive); the grid point itself at an
  edge of the grid or next to a diverged eta; the middle one of several etas tied for the minimum;
- eta_min: the smallest eta with loss at the budget < threshold x initial loss (off the plateau);
- the interval on eta* is a percentile bootstrap over seeds (the same seeds drawn for every eta).

A point at the edge of the eta grid is a bound, not an estimate: the top eta trained (eta_max >= it)
or the best eta is the smallest or largest tried. Such points are reported with a reason and left out
of the power-law fits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis._common import (
    Criterion,
    RunTable,
    check_fraction,
    load_runs,
    none_if_nan,
    percentile_ci,
    theory_exponent,
)
from gammadb.analysis.claims_plan import SweepGrid
from gammadb.analysis.etas import (
    CONVERGED,
    LEFT_PLATEAU,
    EtaGrid,
    cell_stats,
    convergent_indices,
    eta_grid,
    extreme_eta,
    refine_argmin,
    scan_whole_grid,
    select_etas,
    split_cells,
)
from gammadb.analysis.fits import DEFAULT_BOOT, BrokenPowerLaw, broken_power_law, power_law
from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.records import RUN_COLUMNS, same_value
from gammadb.runners.eta_scan import AUTHORS_DECADES_BELOW

TARGETS = ("eta_star", "eta_max", "eta_conv")
REGIMES = ("small_gamma", "large_gamma")
_CRITERION_COLUMN = {
    Criterion.final: "final_loss",
    Criterion.tail_mean: "tail_mean_loss",
    Criterion.min: "min_loss",
    Criterion.test: "test_loss",
}
#: What each criterion measures, as the table title and the JSON name it.
CRITERION_MEANING = {
    Criterion.final: "the training loss at the last step up to the budget",
    Criterion.tail_mean: "the mean training loss over the last 10% of the steps up to the budget",
    Criterion.min: "the smallest training loss up to the budget",
    Criterion.test: "the test loss at the last evaluation up to the budget: the paper's eta*",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    criterion: Criterion = Criterion.tail_mean
    converged: float = CONVERGED
    threshold: float = LEFT_PLATEAU
    small_max: float = 0.1
    large_min: float = 10.0
    n_boot: int = DEFAULT_BOOT
    seed: int = 0
    #: eta_conv's scan window in decades; None: the sweep's ``decades_below`` (see :func:`scan_decades`)
    decades_below: Optional[float] = None

    @property
    def window(self) -> float:
        return AUTHORS_DECADES_BELOW if self.decades_below is None else float(self.decades_below)

    def check(self) -> None:
        check_fraction("--converged", self.converged)
        check_fraction("--threshold", self.threshold)
        if self.converged >= self.threshold:
            raise InvalidSpecError(f"--converged ({self.converged}) must be below --threshold ({self.threshold})")
        if not (0 < self.small_max < self.large_min):
            raise InvalidSpecError(f"need 0 < --small-max ({self.small_max}) < --large-min ({self.large_min})")
        if self.n_boot < 10:
            raise InvalidSpecError(f"--n-boot must be at least 10, got {self.n_boot}")
        if self.decades_below is not None and not (math.isfinite(self.decades_below) and self.decades_below > 0):
            raise InvalidSpecError(f"decades_below must be > 0, got {self.decades_below}")


def scan_decades(spec: Any) -> float:
    """The scan window eta_conv replays for a sweep with stored ``spec``: its ``decades_below`` (what
    its adaptive scan used; a spec's default is the authors' 3), else the authors' 3 (an imported sweep)."""
    value = spec.get("decades_below") if isinstance(spec, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return AUTHORS_DECADES_BELOW

@dataclasses.dataclass(frozen=True)
class OptimalLr:
    """The analysis of one sweep. Frames carry ``group_idx`` and the group columns.

    cells: one row per (group, gamma, eta): value (seed-mean criterion; null if any seed diverged),
      loss_ratio (seed-mean loss at the budget / initial loss), diverged, n_seeds.
    points: one row per (group, gamma), see the module docstring.
    fits: one row per (group, target, regime).
    broken: one row per group: the broken power law of eta* over the whole gamma range.
    """

    sweep: str
    budget_step: int
    settings: Settings
    source: str
    groups: pl.DataFrame
    cells: pl.DataFrame
    points: pl.DataFrame
    fits: pl.DataFrame
    broken: pl.DataFrame

    def to_json(self) -> dict[str, Any]:
        out = []
        for g in self.groups.iter_rows(named=True):
            i = g["group_idx"]
            pts = self.points.filter(pl.col("group_idx") == i).sort("gamma")
            fits = self.fits.filter(pl.col("group_idx") == i)
            bpl = self.broken.filter(pl.col("group_idx") == i).row(0, named=True)
            out.append({
                "group": {c: g[c] for c in RUN_COLUMNS},
                "points": [{
                    "gamma": p["gamma"], "eta_star": p["eta_star"],
                    "eta_star_ci": _pair(p["eta_star_lo"], p["eta_star_hi"]),
                    "eta_max": p["eta_max"], "eta_stable": p["eta_stable"], "eta_conv": p["eta_conv"],
                    "eta_min": p["eta_min"],
                    "loss_at_eta_star": p["loss_at_eta_star"], "n_seeds": p["n_seeds"], "reason": p["reason"],
                } for p in pts.iter_rows(named=True)],
                "fits": [{
                    "target": f["target"], "regime": f["regime"],
                    "gamma_range": _pair(f["gamma_lo"], f["gamma_hi"]),
                    "exponent": f["exponent"], "exponent_ci": _pair(f["exponent_lo"], f["exponent_hi"]),
                    "prefactor": f["prefactor"], "theory_exponent": f["theory_exponent"],
                    "n_points": f["n_points"], "reason": f["reason"],
                } for f in fits.iter_rows(named=True)],
                "broken_power_law": {
                    "target": "eta_star", "slope_small": bpl["slope_small"], "slope_large": bpl["slope_large"],
                    "knee_gamma": bpl["knee_gamma"], "reason": bpl["reason"],
                },
            })
        crit = self.settings.criterion
        return {"sweep": self.sweep, "budget_step": self.budget_step, "criterion": crit.value,
                "criterion_meaning": CRITERION_MEANING[crit], "scan_decades_below": self.settings.window,
                "groups": out}


def analyze(store: Any, sweep: str, *, budget: Optional[int] = None, settings: Settings = Settings()) -> OptimalLr:
    """Read ``sweep`` at ``budget`` (one row per run, aggregated in SQL) and analyse it; eta_conv's
    scan window is the sweep's own unless ``settings`` sets one. Each missing fit's reason ends with
    the flags that would fill it. Computed once per page (:func:`analysis`)."""
    from gammadb.analysis.shared import shared_result

    settings = sweep_settings(store, sweep, settings)

    def build() -> OptimalLr:
        res = analysis(store, sweep, budget=budget, settings=settings)[1]
        points, fits = with_fills(res.points, res.fits, res.cells, res.groups, sweep_grid(store, sweep), settings)
        return dataclasses.replace(res, points=points, fits=fits)

    return shared_result(store, ("optimal_lr.analyze", sweep, budget, settings), build)


def sweep_grid(store: Any, sweep: str) -> SweepGrid:
    """The sweep as it stands (:meth:`SweepGrid.read`), read once per page."""
    from gammadb.analysis.shared import shared_result, sweep_record

    return shared_result(store, ("SweepGrid", sweep),
                         lambda: SweepGrid.read(store, sweep, sweep_record(store, sweep).spec))


def sweep_settings(store: Any, sweep: str, settings: Settings = Settings()) -> Settings:
    """``settings``, checked, with eta_conv's scan window the sweep's own where it sets none."""
    from gammadb.analysis.shared import sweep_record

    settings.check()
    if settings.decades_below is None:
        settings = dataclasses.replace(settings, decades_below=scan_decades(sweep_record(store, sweep).spec))
    return settings


def analysis(store: Any, sweep: str, *, budget: Optional[int] = None,
             settings: Settings = Settings()) -> tuple[RunTable, OptimalLr]:
    """The per-run table of ``sweep`` at ``budget`` and its analysis (:func:`analyze_runs`, without
    the reasons' fills), computed once per page within :func:`gammadb.analysis.shared.shared_reads`:
    the claims verdict, the eta* charts and tables and the U-curve of one page ask for the same.
    Both are shared: derive new frames from them, never change them in place."""
    from gammadb.analysis.shared import shared_result

    settings = sweep_settings(store, sweep, settings)
    table = load_runs(store, sweep, budget=budget, want_min=settings.criterion == Criterion.min,
                      want_test=settings.criterion == Criterion.test)
    return table, shared_result(store, ("optimal_lr.analyze_runs", sweep, budget, settings),
                                lambda: analyze_runs(table, sweep, settings))


def analyze_runs(table: RunTable, sweep: str, settings: Settings = Settings(),
                 grid: Optional[SweepGrid] = None) -> OptimalLr:
    """The analysis of a per-run table (see :class:`gammadb.analysis._common.RunTable`). With the
    sweep's ``grid``, the reason of a missing fit or interval ends with the flags that would fill it."""
    settings.check()
    runs = with_value(table.frame, settings.criterion)
    groups, runs = index_groups(runs)
    cells, points, boots = optimal_points(runs, settings)
    fits = power_law_fits(points, boots, groups, settings)
    broken = broken_fits(points, groups)
    if grid is not None:
        points, fits = with_fills(points, fits, cells, groups, grid, settings)
    return OptimalLr(sweep, table.budget_step, settings, table.source, groups, cells, points, fits, broken)


def with_value(runs: pl.DataFrame, criterion: Criterion) -> pl.DataFrame:
    col = _CRITERION_COLUMN[criterion]
    if col not in runs.columns:
        raise AnalysisError(f"the run table has no {col} (needed by --criterion {criterion.value})")
    return runs.with_columns(pl.col(col).alias("value"))


def index_groups(runs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Number the groups (runs sharing all of RUN_COLUMNS) 0, 1, ... in sorted order."""
    groups = (runs.select(RUN_COLUMNS).unique().sort(list(RUN_COLUMNS), nulls_last=False)
              .with_row_index("group_idx").with_columns(pl.col("group_idx").cast(pl.Int64)))
    return groups, runs.join(groups, on=list(RUN_COLUMNS), how="left", nulls_equal=True)


# ---------------------------------------------------------------------- per gamma
def optimal_points(runs: pl.DataFrame, s: Settings) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """cells, points and the bootstrap draws {(group_idx, gamma): {target: (B,) array}}."""
    rng = np.random.default_rng(s.seed)
    cell_rows: list[dict[str, Any]] = []
    point_rows: list[dict[str, Any]] = []
    boots: dict[tuple[int, float], dict[str, np.ndarray]] = {}
    for (gi, gamma), sub in split_cells(runs):
        g = eta_grid(sub)
        n_seeds = g.present.shape[1]
        one = np.ones((1, n_seeds))
        st = {k: v[0] for k, v in cell_stats(g, one, converged=s.converged, threshold=s.threshold).items()}
        for e, le in enumerate(g.log_eta):
            cell_rows.append(dict(
                group_idx=gi, gamma=gamma, eta=float(10**le),
                value=None if st["any_div"][e] else none_if_nan(st["value"][e]),
                loss_ratio=None if st["any_div"][e] else none_if_nan(st["ratio"][e]),
                diverged=bool(st["any_div"][e]), n_seeds=int(g.present[e].sum()),
                n_diverged=int(g.diverged[e].sum()),
            ))
        whole = scan_whole_grid(sub, gamma)
        point = _point(g, st, s, whole)
        if n_seeds > 1:
            w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=s.n_boot).astype(float)
            bst = cell_stats(g, w, converged=s.converged, threshold=s.threshold)
            star_b, _, _ = refine_argmin(g.log_eta, bst["value"])
            max_b = extreme_eta(bst["trained"], g.log_eta, top=True)
            conv_i = convergent_indices(g, bst["any_div"], bst["tried"], decades_below=s.window, whole=whole)
            conv_b = np.where(conv_i >= 0, g.log_eta[np.maximum(conv_i, 0)], np.nan)
            ci = percentile_ci(10**star_b)
            boots[(gi, gamma)] = {"eta_star": 10**star_b, "eta_max": 10**max_b, "eta_conv": 10**conv_b}
        else:
            ci = None
            point["notes"].append("1 seed: no bootstrap interval on eta*")
        point_rows.append(dict(
            group_idx=gi, gamma=gamma, eta_star=point["eta_star"],
            eta_star_lo=ci[0] if ci and point["eta_star"] is not None else None,
            eta_star_hi=ci[1] if ci and point["eta_star"] is not None else None,
            eta_max=point["eta_max"], eta_stable=point["eta_stable"], eta_conv=point["eta_conv"],
            eta_min=point["eta_min"], loss_at_eta_star=point["loss"], n_seeds=n_seeds, n_etas=int(g.log_eta.size),
            eta_star_censored=point["star_censored"], eta_max_censored=point["max_censored"],
            eta_conv_censored=point["conv_censored"], reason="; ".join(point["notes"]) or None,
        ))
    cells = pl.DataFrame(cell_rows, schema=_CELL_SCHEMA)
    points = pl.DataFrame(point_rows, schema=_POINT_SCHEMA)
    groups = runs.select("group_idx", *RUN_COLUMNS).unique("group_idx")
    return (cells.join(groups, on="group_idx").sort("group_idx", "gamma", "eta"),
            points.join(groups, on="group_idx").sort("group_idx", "gamma"), boots)


def _point(g: EtaGrid, st: dict[str, np.ndarray], s: Settings, whole: bool) -> dict[str, Any]:
    notes: list[str] = []
    top, bottom = float(10 ** g.log_eta[-1]), float(10 ** g.log_eta[0])
    e = select_etas(g, st, decades_below=s.window, whole=whole)
    star_censored = e.star_edge
    if e.star_index < 0:
        notes.append("every eta diverged at this gamma")
        eta_star = loss = None
    else:
        eta_star = float(10 ** e.log_eta_star)
        loss = none_if_nan(e.loss_at_eta_star)
        if star_censored:
            side = "largest" if e.star_index == g.log_eta.size - 1 else "smallest"
            notes.append(f"eta* is the {side} eta tried ({eta_star:.3g}): a bound, left out of the fits")
    eta_max = _grid_eta(g, e.max_index)
    max_censored = eta_max is not None and same_value(eta_max, top)
    if eta_max is None and e.star_index >= 0:
        notes.append(f"no eta reached loss <= {s.converged:g} x initial by the budget")
    elif max_censored:
        notes.append(f"the largest eta tried ({top:.3g}) trained: eta_max is a lower bound, left out of the fits")
    eta_stable = _grid_eta(g, e.stable_index)
    eta_conv = _grid_eta(g, e.conv_index)
    # the largest eta tried did not diverge: the scan's value is a lower bound
    conv_censored = eta_conv is not None and same_value(eta_conv, top)
    if conv_censored and not max_censored:
        notes.append(f"no seed diverged at the largest eta tried ({top:.3g}): eta_conv is a lower bound, "
                     "left out of the fits")
    elif eta_conv is None and eta_stable is not None:
        notes.append("the scan's last eta had a diverged seed: no eta_conv")
    eta_min = _grid_eta(g, e.min_index)
    if eta_min is not None and same_value(eta_min, bottom) and g.log_eta.size > 1:
        notes.append(f"the smallest eta tried ({bottom:.3g}) left the plateau: eta_min is an upper bound")
    return dict(eta_star=eta_star, loss=loss, eta_max=eta_max, eta_stable=eta_stable, eta_conv=eta_conv,
                eta_min=eta_min, star_censored=star_censored, max_censored=max_censored,
                conv_censored=conv_censored, notes=notes)


def _grid_eta(g: EtaGrid, i: int) -> Optional[float]:
    """The grid eta at index ``i`` as reported (10^log10 eta), None for -1."""
    return None if i < 0 else float(10 ** g.log_eta[i])


# ---------------------------------------------------------------------- what would fill a gap
def with_fills(points: pl.DataFrame, fits: pl.DataFrame, cells: pl.DataFrame, groups: pl.DataFrame,
               grid: SweepGrid, s: Settings) -> tuple[pl.DataFrame, pl.DataFrame]:
    """points and fits with each missing fit's reason, and each one-seed point's, ending in
    '; to fill it: <flags>': the grid that the claims verdict would run (``claims._lr_needs``)."""
    from gammadb.analysis.claims import _lr_needs

    def fill(need: Any) -> str:
        return f"; to fill it: {need.flags()}"

    by_group = {g["group_idx"]: g for g in groups.iter_rows(named=True)}
    fit_reasons = []
    for f in fits.iter_rows(named=True):
        reason, g = f["reason"], by_group[f["group_idx"]]
        if f["exponent"] is None and reason is not None:
            mine = pl.col("group_idx") == f["group_idx"]
            need = _lr_needs(grid.needs(g), points.filter(mine), cells.filter(mine), f["target"], f["regime"], s,
                             g.get("depth"))
            reason += fill(need)
        fit_reasons.append(reason)
    point_reasons = [
        p["reason"] + fill(grid.needs(by_group[p["group_idx"]]).more_seeds(3))
        if p["n_seeds"] == 1 and p["reason"] is not None else p["reason"]
        for p in points.iter_rows(named=True)]
    return (points.with_columns(pl.Series("reason", point_reasons, dtype=pl.String)),
            fits.with_columns(pl.Series("reason", fit_reasons, dtype=pl.String)))


# ---------------------------------------------------------------------- fits against gamma
def regime_mask(gamma: pl.Expr | np.ndarray, regime: str, s: Settings):
    return gamma <= s.small_max if regime == "small_gamma" else gamma >= s.large_min


def power_law_fits(points: pl.DataFrame, boots: dict, groups: pl.DataFrame, s: Settings) -> pl.DataFrame:
    rows = []
    for grp in groups.iter_rows(named=True):
        gi = grp["group_idx"]
        pts = points.filter(pl.col("group_idx") == gi).sort("gamma")
        for target in TARGETS:
            for regime in REGIMES:
                sel = pts.filter(regime_mask(pl.col("gamma"), regime, s))
                usable = sel.filter(pl.col(target).is_not_null() & ~pl.col(f"{target}_censored"))
                # eta_conv is the divergence boundary, as eta_max: the same theory exponents
                theory = theory_exponent("eta_max" if target == "eta_conv" else target, regime, grp)
                gam = usable["gamma"].to_numpy()
                yb = _boot_matrix(boots, gi, gam, target, s.n_boot, usable[target].to_numpy())
                fit = power_law(gam, usable[target].to_numpy(), y_boot=yb, n_boot=s.n_boot, seed=s.seed,
                                what=target)
                reason = fit.reason
                if reason is not None:
                    side = f"gamma <= {s.small_max:g}" if regime == "small_gamma" else f"gamma >= {s.large_min:g}"
                    dropped = sel.height - usable.height
                    reason = f"{reason} in {side}" + (
                        f" ({dropped} more gamma value(s) without one, or at the edge of the eta grid)"
                        if dropped else "")
                rows.append(dict(
                    group_idx=gi, target=target, regime=regime,
                    gamma_lo=fit.x_range[0] if fit.x_range else None,
                    gamma_hi=fit.x_range[1] if fit.x_range else None,
                    exponent=fit.exponent,
                    exponent_lo=fit.exponent_ci[0] if fit.exponent_ci else None,
                    exponent_hi=fit.exponent_ci[1] if fit.exponent_ci else None,
                    prefactor=fit.prefactor, r2_log=fit.r2_log, theory_exponent=theory,
                    n_points=fit.n_points, reason=reason,
                ))
    return pl.DataFrame(rows, schema=_FIT_SCHEMA).join(
        groups, on="group_idx").sort("group_idx", "target", "regime", descending=[False, True, True])


def _boot_matrix(boots: dict, gi: int, gammas: np.ndarray, target: str, n_boot: int,
                 point: np.ndarray) -> np.ndarray:
    """(n_boot, n) bootstrap draws of ``target`` at each gamma; the point value repeated where a
    gamma has no draws (one seed)."""
    cols = []
    for gam, p in zip(gammas, point):
        d = boots.get((gi, float(gam)), {}).get(target)
        cols.append(d if d is not None else np.full(n_boot, p))
    return np.column_stack(cols) if cols else np.zeros((n_boot, 0))


def broken_fits(points: pl.DataFrame, groups: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for grp in groups.iter_rows(named=True):
        gi = grp["group_idx"]
        pts = points.filter((pl.col("group_idx") == gi) & pl.col("eta_star").is_not_null()
                            & ~pl.col("eta_star_censored"))
        bpl: BrokenPowerLaw = broken_power_law(pts["gamma"].to_numpy(), pts["eta_star"].to_numpy())
        rows.append(dict(group_idx=gi, slope_small=bpl.slope_small, slope_large=bpl.slope_large,
                         knee_gamma=bpl.knee, prefactor=bpl.prefactor, n_points=bpl.n_points,
                         reason=bpl.reason))
    return pl.DataFrame(rows, schema=_BROKEN_SCHEMA).join(groups, on="group_idx").sort("group_idx")


def _pair(lo: Any, hi: Any) -> Optional[list[float]]:
    if lo is None or hi is None:
        return None
    return [float(lo), float(hi)]


_CELL_SCHEMA = {"group_idx": pl.Int64, "gamma": pl.Float64, "eta": pl.Float64, "value": pl.Float64,
                "loss_ratio": pl.Float64, "diverged": pl.Boolean, "n_seeds": pl.Int64, "n_diverged": pl.Int64}
_POINT_SCHEMA = {"group_idx": pl.Int64, "gamma": pl.Float64, "eta_star": pl.Float64, "eta_star_lo": pl.Float64,
                 "eta_star_hi": pl.Float64, "eta_max": pl.Float64, "eta_stable": pl.Float64,
                 "eta_conv": pl.Float64, "eta_min": pl.Float64, "loss_at_eta_star": pl.Float64,
                 "n_seeds": pl.Int64, "n_etas": pl.Int64, "eta_star_censored": pl.Boolean,
                 "eta_max_censored": pl.Boolean, "eta_conv_censored": pl.Boolean, "reason": pl.String}
_FIT_SCHEMA = {"group_idx": pl.Int64, "target": pl.String, "regime": pl.String, "gamma_lo": pl.Float64,
               "gamma_hi": pl.Float64, "exponent": pl.Float64, "exponent_lo": pl.Float64,
               "exponent_hi": pl.Float64, "prefactor": pl.Float64, "r2_log": pl.Float64,
               "theory_exponent": pl.Float64, "n_points": pl.Int64, "reason": pl.String}
_BROKEN_SCHEMA = {"group_idx": pl.Int64, "slope_small": pl.Float64, "slope_large": pl.Float64,
                  "knee_gamma": pl.Float64, "prefactor": pl.Float64, "n_points": pl.Int64, "reason": pl.String}


def report_tables(result: OptimalLr) -> list[tuple[str, pl.DataFrame]]:
    """(title, frame) pairs for the terminal: per group its points, fits and broken power law."""
    out = []
    for g in result.groups.iter_rows(named=True):
        i = g["group_idx"]
        name = ", ".join(f"{c}={g[c]}" for c in RUN_COLUMNS if g[c] not in (None, "unknown")) or "all runs"
        pts = result.points.filter(pl.col("group_idx") == i).select(
            "gamma", "eta_star", pl.col("eta_star_lo").alias("ci_lo"), pl.col("eta_star_hi").alias("ci_hi"),
            "eta_max", "eta_stable", "eta_conv", "eta_min", pl.col("loss_at_eta_star").alias("loss_at_eta*"),
            "n_seeds",
            pl.col("reason").fill_null(""))
        fits = result.fits.filter(pl.col("group_idx") == i).select(
            "target", "regime", "gamma_lo", "gamma_hi", "exponent", pl.col("exponent_lo").alias("ci_lo"),
            pl.col("exponent_hi").alias("ci_hi"), pl.col("theory_exponent").alias("theory"), "prefactor",
            "n_points", pl.col("reason").fill_null(""))
        bpl = result.broken.filter(pl.col("group_idx") == i).select(
            "slope_small", "slope_large", "knee_gamma", "n_points", pl.col("reason").fill_null(""))
        crit = result.settings.criterion
        out += [(f"{result.sweep} ({name}): per gamma, budget step {result.budget_step}, criterion {crit.value} "
                 f"({CRITERION_MEANING[crit]}), eta_conv scan window {result.settings.window:g} decades", pts),
                (f"power laws of eta*, eta_max and eta_conv vs gamma ({name})", fits),
                (f"smoothly broken power law of eta* ({name})", bpl)]
    return out
