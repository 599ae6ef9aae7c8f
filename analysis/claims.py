"""The paper's claims held against one sweep: one verdict per claim the sweep can test.

Each row restates a claim of docs/theory.md#claims, its theory value, the value the sweep measures
(with its interval) and a verdict. The numbers come from the existing analyses, called as they are:

- (a) eta* ~ gamma^2 for gamma << 1, (b) eta* ~ gamma^(2/L) for gamma >> 1 and (c) the same two for
  the largest convergent eta (claim 1; eta_max by default, ``largest="eta_conv"`` for the authors'
  scan value, whose window is the sweep's ``decades_below``): the power-law fits of
  :mod:`gammadb.analysis.optimal_lr` (exponent and its bootstrap interval over seeds; theory from ``theory_exponent``, e.g. 1 for eta_max with
  cross-entropy at small gamma);
- (d) the plateau before the first drop lengthens as gamma grows (claims 3 and 4): the plateau-length
  scaling of :mod:`gammadb.analysis.plateaus` along eta*(gamma), against its theory 1 - 2/L (the escape
  at tau = eta t / gamma ~ const with eta* ~ gamma^(2/L));
- (e) large-gamma loss curves collapse under tau = eta t / gamma (claim 4): :mod:`gammadb.analysis.collapse`
  at one eta, gamma >= 1: the fitted exponent of the time scale s against gamma (theory -1), and the
  RMS distance between curves after rescaling by tau, which must be smaller than before;
- (f) the best loss over eta is reached at gamma >= 1 (claim 5): per gamma the lowest seed-mean loss
  at the budget over eta (optimal_lr's ``loss_at_eta_star``); the measured value is the gamma where it
  is lowest, its interval a percentile bootstrap over seeds (the same seeds drawn for every cell).

**The consistency rule.** A claim is *consistent* when its theory value lies inside the measured
95% interval widened on both sides by ``tolerance`` (default 0.15, the tolerance docs/theory.md
gives for exponents read from half-decade grids; a measurement without an interval, e.g. from one
seed, is widened from its point value); (e) also needs the RMS distance after rescaling to be below
the one before; (f), a bound rather than a value, is consistent when the upper end of the interval
on the best gamma is >= 1 (the sweep cannot rule it out). Otherwise it is *inconsistent*. A claim is
*not testable here* when the analysis cannot produce the measurement (too few gammas in the regime,
an estimate at the edge of the eta grid, curves still on the plateau at the budget, no theory value
for this model or loss); the row then says why and gives a ``gammadb run`` command line that adds
what is missing (gammas, etas, seeds or steps), built by :mod:`gammadb.analysis.claims_plan`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import polars as pl

from gammadb.analysis.claims_plan import Needs, SweepGrid
from gammadb.errors import AnalysisError, InvalidSpecError

TOLERANCE = 0.15
LEVEL = 0.95
REF = "docs/theory.md#claim-"


class Verdict(str, enum.Enum):
    consistent = "consistent"
    inconsistent = "inconsistent"
    not_testable = "not testable here"


@dataclasses.dataclass(frozen=True)
class ClaimRow:
    """One claim against one group of runs (runs sharing everything but gamma, eta and seed).

    ``theory`` and ``measured`` are numbers (exponents; for (f) a gamma), ``interval`` the measured
    value's 95% interval; ``run`` the command that would make a not-testable claim testable."""

    key: str  # a, b, c-small, c-large, d, e, f
    claim: str
    ref: str
    group: str
    theory: Optional[float]
    theory_text: str
    measured: Optional[float]
    interval: Optional[tuple[float, float]]
    verdict: Verdict
    note: str
    run: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "claim": self.claim, "ref": self.ref, "group": self.group,
                "theory": self.theory, "theory_text": self.theory_text, "measured": self.measured,
                "interval": list(self.interval) if self.interval else None, "verdict": self.verdict.value,
                "note": self.note, "run": self.run}


@dataclasses.dataclass(frozen=True)
class ClaimsReport:
    sweep: str
    budget_step: Optional[int]
    tolerance: float
    rows: tuple[ClaimRow, ...]

    @property
    def rule(self) -> str:
        return (f"consistent: the theory value lies in the measured 95% interval widened by +-{self.tolerance:g} "
                "(collapse: and the RMS distance shrinks after rescaling; best gamma: the interval reaches "
                "gamma >= 1); not testable: the measurement is missing")

    def to_json(self) -> dict[str, Any]:
        counts = {v.value: sum(r.verdict == v for r in self.rows) for v in Verdict}
        return {"sweep": self.sweep, "budget_step": self.budget_step, "tolerance": self.tolerance,
                "rule": self.rule, "counts": counts, "claims": [r.to_json() for r in self.rows]}

    def table(self) -> pl.DataFrame:
        """One row per claim for the terminal (``lines`` carries each row's note and command)."""
        cols = {
            "claim": [f"({r.key}) {r.claim}" for r in self.rows],
            "group": [r.group for r in self.rows],
            "theory": [r.theory_text for r in self.rows],
            "measured": [r.measured for r in self.rows],
            "ci_lo": [r.interval[0] if r.interval else None for r in self.rows],
            "ci_hi": [r.interval[1] if r.interval else None for r in self.rows],
            "verdict": [r.verdict.value for r in self.rows],
        }
        schema = {"claim": pl.String, "group": pl.String, "theory": pl.String, "measured": pl.Float64,
                  "ci_lo": pl.Float64, "ci_hi": pl.Float64, "verdict": pl.String}
        df = pl.DataFrame(cols, schema=schema)
        return df if any(r.group for r in self.rows) else df.drop("group")

    def lines(self) -> list[str]:
        """Per claim: '(key) [group] verdict: note', and for a claim not testable here the command
        that would make it testable."""
        out = []
        for r in self.rows:
            out.append(f"({r.key}){f' [{r.group}]' if r.group else ''} {r.verdict.value}: {r.note}")
            if r.run:
                out.append(f"    to test it: {r.run}")
        return out


# ---------------------------------------------------------------------- the entry point
_LR_ROWS = (  # (key, target, regime, claim)
    ("a", "eta_star", "small_gamma", "eta* ~ gamma^2, gamma << 1"),
    ("b", "eta_star", "large_gamma", "eta* ~ gamma^(2/L), gamma >> 1"),
    ("c-small", "eta_max", "small_gamma", "eta_max ~ gamma^2, gamma << 1"),
    ("c-large", "eta_max", "large_gamma", "eta_max ~ gamma^(2/L), gamma >> 1"),
)
_CLAIM_D = "plateau lengthens as gamma grows"
_CLAIM_E = "curves collapse in tau = eta t / gamma"
_CLAIM_F = "best loss over eta at gamma >= 1"


def verdict(store: Any, sweep: str, *, budget: Optional[int] = None, tolerance: float = TOLERANCE,
            n_boot: int = 1000, seed: int = 0, small_max: float = 0.1, large_min: float = 10.0,
            gamma_min: float = 1.0, largest: str = "eta_max") -> ClaimsReport:
    """Hold the claims of docs/theory.md against ``sweep`` (see the module docstring).

    ``budget``: the step at which eta* and eta_max are judged (default: the last step every
    non-diverged run reached); ``small_max`` / ``large_min``: the gamma ranges of the small- and
    large-gamma fits; ``gamma_min``: the plateau and collapse claims look at gamma >= this. An analysis
    that cannot run (AnalysisError) makes its claims "not testable here" with its message; an unknown
    sweep raises NotFoundError. ``largest``: the largest convergent eta rows (c) fit, eta_max or
    eta_conv."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidSpecError(f"--tolerance must be a number >= 0, got {tolerance}")
    if not (math.isfinite(gamma_min) and gamma_min > 0):
        raise InvalidSpecError(f"gamma_min must be > 0, got {gamma_min}")
    from gammadb.analysis import optimal_lr as olr

    if largest not in ("eta_max", "eta_conv"):
        raise InvalidSpecError(f"largest must be eta_max or eta_conv, got {largest!r}")
    from gammadb.analysis.shared import sweep_record

    sweep_rec = sweep_record(store, sweep)  # NotFoundError with the known sweeps
    settings = olr.Settings(small_max=small_max, large_min=large_min, n_boot=n_boot, seed=seed,
                            decades_below=olr.scan_decades(sweep_rec.spec))
    settings.check()
    grid = olr.sweep_grid(store, sweep)
    rows: list[ClaimRow] = []
    budget_step: Optional[int] = None
    try:
        # the page's own optimal-lr analysis where its settings are these (the dashboard's claims and
        # eta* chart); the report asks for fewer bootstrap draws here: an analysis of its own
        table, lr = olr.analysis(store, sweep, budget=budget, settings=settings)
        budget_step = lr.budget_step
    except AnalysisError as exc:
        why = f"optimal-lr: {exc}"
        for key, target, regime, claim in _lr_row_defs(largest):
            need = grid.needs().cover_regime(regime, settings, grid.depth)
            theory = 2.0 if regime == "small_gamma" else 2.0 / grid.depth if grid.depth else None
            text = _theory_text(theory, regime) if theory is not None else "2/L"
            rows.append(_untestable(key, claim, 1, "", text, why, need.command(), theory))
        rows.append(_untestable("f", _CLAIM_F, 5, "", ">= 1", why,
                                grid.needs().cover_gammas(0.1, 10.0, grid.depth).command()))
    else:
        rows += _lr_rows(lr, grid, settings, tolerance, largest)
        rows += _best_gamma_rows(lr, table, grid, settings)
    rows += _plateau_rows(store, sweep, grid, gamma_min, tolerance)
    rows += _collapse_rows(store, sweep, grid, gamma_min, tolerance)
    order = {k: i for i, k in enumerate(("a", "b", "c-small", "c-large", "d", "e", "f"))}
    rows.sort(key=lambda r: (order[r.key], r.group))
    return ClaimsReport(sweep, budget_step, tolerance, tuple(rows))


# ---------------------------------------------------------------------- judging
def within(theory: float, measured: float, interval: Optional[Sequence[float]], tolerance: float) -> bool:
    """The rule: ``theory`` inside ``interval`` (else the point ``measured``) widened by ``tolerance``."""
    lo, hi = (interval[0], interval[1]) if interval else (measured, measured)
    return lo - tolerance <= theory <= hi + tolerance


def _untestable(key: str, claim: str, n: int, group: str, theory_text: str, why: str,
                run: Optional[str], theory: Optional[float] = None) -> ClaimRow:
    return ClaimRow(key, claim, f"{REF}{n}", group, theory, theory_text, None, None, Verdict.not_testable,
                    why, run)


def _judged(key: str, claim: str, n: int, group: str, theory: float, theory_text: str, measured: float,
            interval: Optional[Sequence[float]], ok: bool, note: str) -> ClaimRow:
    iv = (float(interval[0]), float(interval[1])) if interval else None
    return ClaimRow(key, claim, f"{REF}{n}", group, float(theory), theory_text, float(measured), iv,
                    Verdict.consistent if ok else Verdict.inconsistent, note)


def _theory_text(theory: Optional[float], regime: str) -> str:
    if theory is None:
        return "none stated"
    if regime == "small_gamma":
        return f"{theory:g}"
    return f"2/L = {theory:.3g}"


def _group_labels(groups: pl.DataFrame) -> dict[int, str]:
    """group_idx -> 'depth=3' (the columns that vary between groups; '' when there is one group)."""
    varying = [c for c in groups.columns if c != "group_idx" and groups[c].n_unique() > 1]
    return {int(g["group_idx"]): ", ".join(f"{c}={g[c]}" for c in varying) for g in groups.iter_rows(named=True)}


def _lr_row_defs(largest: str) -> list[tuple[str, str, str, str]]:
    """_LR_ROWS with rows (c) on ``largest`` (eta_max or eta_conv)."""
    return [(k, largest if t == "eta_max" else t, r, c.replace("eta_max", largest)) for k, t, r, c in _LR_ROWS]


def _lr_rows(lr: Any, grid: "SweepGrid", settings: Any, tol: float, largest: str = "eta_max") -> list[ClaimRow]:
    rows = []
    labels = _group_labels(lr.groups)
    for g in lr.groups.iter_rows(named=True):
        gi = g["group_idx"]
        label = labels[gi]
        fits = {(f["target"], f["regime"]): f for f in lr.fits.filter(pl.col("group_idx") == gi).iter_rows(named=True)}
        pts = lr.points.filter(pl.col("group_idx") == gi)
        cells = lr.cells.filter(pl.col("group_idx") == gi)
        for key, target, regime, claim in _lr_row_defs(largest):
            f = fits[(target, regime)]
            theory = f["theory_exponent"]
            text = _theory_text(theory, regime)
            if theory is None:
                why = (f"docs/theory.md states no {target} exponent at {regime.replace('_', ' ')} for model="
                       f"{g['model']}, loss_fn={g['loss_fn']}, optimizer={g['optimizer']}")
                need = grid.needs(g).override(loss_fn="mse", optimizer="sgd")
                if g["model"] not in ("mlp", "toy", "cnn"):
                    need = need.override(model="mlp", task="teacher")
                rows.append(_untestable(key, claim, 1, label, text, why, need.command()))
                continue
            if f["exponent"] is None:
                need = _lr_needs(grid.needs(g), pts, cells, target, regime, settings, g.get("depth"))
                rows.append(_untestable(key, claim, 1, label, text, f"no fit: {f['reason']}", need.command(),
                                        theory))
                continue
            ci = (f["exponent_lo"], f["exponent_hi"]) if f["exponent_lo"] is not None else None
            note = (f"{f['n_points']} gammas in [{f['gamma_lo']:g}, {f['gamma_hi']:g}]"
                    + ("" if ci else "; no interval (one seed): judged on the point value"))
            rows.append(_judged(key, claim, 1, label, theory, text, f["exponent"], ci,
                                within(theory, f["exponent"], ci, tol), note))
    return rows


def _lr_needs(need: "Needs", pts: pl.DataFrame, cells: pl.DataFrame, target: str, regime: str,
              settings: Any, depth: Optional[int]) -> "Needs":
    """What a missing power-law fit of ``target`` in ``regime`` needs: gammas in the regime, etas
    past the edges where the estimate was censored, seeds for an interval, steps when nothing trained."""
    need = need.cover_regime(regime, settings, depth)
    small = regime == "small_gamma"
    sel = pts.filter(pl.col("gamma") <= settings.small_max if small else pl.col("gamma") >= settings.large_min)
    for p in sel.iter_rows(named=True):
        etas = cells.filter(pl.col("gamma") == p["gamma"])["eta"]
        value, censored = p[target], p[f"{target}_censored"]
        if value is None:
            if target != "eta_max" or cells.filter((pl.col("gamma") == p["gamma"]) & ~pl.col("diverged")).is_empty():
                need = need.widen_eta(low=1.0)  # every eta (eta_conv: the lowest scanned) diverged: go lower
            else:
                need = need.more_steps(4)  # stable but never trained to the threshold
        elif censored and target == "eta_star" and math.isclose(value, float(etas.min()), rel_tol=1e-9):
            need = need.widen_eta(low=1.0)
        elif censored:
            need = need.widen_eta(high=1.0)
    return need


def _best_gamma_rows(lr: Any, table: Any, grid: "SweepGrid", settings: Any) -> list[ClaimRow]:
    """(f): per group, the gamma whose best loss over eta is lowest, with a bootstrap interval."""
    from gammadb.analysis.optimal_lr import with_value

    rows = []
    labels = _group_labels(lr.groups)
    keys = [c for c in lr.groups.columns if c != "group_idx"]  # the columns that define a group
    runs = with_value(table.frame, settings.criterion).join(lr.groups, on=keys, how="left", nulls_equal=True)
    for g in lr.groups.iter_rows(named=True):
        gi = g["group_idx"]
        label = labels[gi]
        pts = lr.points.filter((pl.col("group_idx") == gi) & pl.col("loss_at_eta_star").is_not_null())
        below, above = pts.filter(pl.col("gamma") < 1.0), pts.filter(pl.col("gamma") >= 1.0)
        if below.is_empty() or above.is_empty():
            side = "below 1" if below.is_empty() else ">= 1"
            why = f"no gamma {side} with a finite best loss over eta: nothing to compare"
            need = grid.needs(g).cover_gammas(0.1, 10.0, g.get("depth"))
            rows.append(_untestable("f", _CLAIM_F, 5, label, ">= 1", why, need.command(), 1.0))
            continue
        best = pts.sort("loss_at_eta_star").row(0, named=True)
        ci, n_seeds = best_gamma_interval(runs.filter(pl.col("group_idx") == gi), settings.n_boot, settings.seed)
        hi = ci[1] if ci else best["gamma"]
        note = (f"best loss {best['loss_at_eta_star']:.4g} at gamma={best['gamma']:g} (eta*={best['eta_star']:.3g}) "
                f"among {pts.height} gammas" + ("" if ci else f"; {n_seeds} seed(s): no interval"))
        rows.append(_judged("f", _CLAIM_F, 5, label, 1.0, ">= 1", best["gamma"], ci, hi >= 1.0, note))
    return rows


def best_gamma_interval(runs: pl.DataFrame, n_boot: int, seed: int = 0,
                        level: float = LEVEL) -> tuple[Optional[tuple[float, float]], int]:
    """Percentile interval of the gamma with the lowest best-over-eta seed-mean ``value``, from a
    bootstrap over seeds; a cell with any drawn seed diverged counts as infinitely bad (as in
    optimal_lr). Returns (interval or None with one seed, number of seeds)."""
    gammas = np.unique(runs["gamma"].to_numpy())
    etas = np.unique(runs["eta"].to_numpy())
    seeds = np.unique(runs["seed"].to_numpy())
    if seeds.size < 2:
        return None, int(seeds.size)
    gi = np.searchsorted(gammas, runs["gamma"].to_numpy())
    ei = np.searchsorted(etas, runs["eta"].to_numpy())
    si = np.searchsorted(seeds, runs["seed"].to_numpy())
    shape = (gammas.size, etas.size, seeds.size)
    val = np.zeros(shape)
    ok = np.zeros(shape)
    div = np.zeros(shape)
    v = runs["value"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    d = runs["diverged"].to_numpy().astype(bool) | ~np.isfinite(v)
    val[gi, ei, si] = np.where(d, 0.0, v)
    ok[gi, ei, si] = ~d
    div[gi, ei, si] = d
    rng = np.random.default_rng(seed)
    w = rng.multinomial(seeds.size, np.full(seeds.size, 1.0 / seeds.size), size=n_boot).astype(float)
    # n_boot draws of a few seeds repeat a few distinct weightings (3 for two seeds): each is
    # computed once and serves every draw equal to it
    w, draw = np.unique(w, axis=0, return_inverse=True)
    draw = draw.reshape(-1)
    num = np.einsum("bs,ges->bge", w, val)
    den = np.einsum("bs,ges->bge", w, ok)
    bad = np.einsum("bs,ges->bge", w, div) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(bad | (den == 0), np.inf, num / np.where(den > 0, den, 1.0))
    best = mean.min(axis=2)  # (distinct draws, G): the best loss over eta
    has = np.isfinite(best).any(axis=1)[draw]
    if not has.any():
        return None, int(seeds.size)
    arg = np.argmin(np.where(np.isfinite(best), best, np.inf), axis=1)[draw][has]
    lg = np.log10(gammas[arg])
    a = (1 - level) / 2
    lo, hi = np.quantile(lg, [a, 1 - a])
    return (float(10**lo), float(10**hi)), int(seeds.size)


def _plateau_rows(store: Any, sweep: str, grid: "SweepGrid", gamma_min: float, tol: float) -> list[ClaimRow]:
    """(d): plateaus.analyze_plateau_scaling along eta*(gamma), one row per group."""
    need = grid.needs().cover_gammas(gamma_min, 100 * gamma_min, grid.depth)
    try:
        from gammadb.analysis.plateaus import analyze_plateau_scaling

        scaling = analyze_plateau_scaling(store, sweep, gamma_min=gamma_min)
    except AnalysisError as exc:
        return [_untestable("d", _CLAIM_D, 3, "", "1 - 2/L", f"plateaus: {exc}", need.command())]
    rows = []
    for g in scaling["groups"]:
        label = ", ".join(f"{k}={v}" for k, v in g["group"].items())
        theory = g["theory_exponent"]
        text = f"1 - 2/L = {theory:.3g}" if theory is not None else "1 - 2/L"
        gneed = grid.needs(g["group"]).cover_gammas(gamma_min, 100 * gamma_min, g.get("depth"))
        if g["n_censored"]:
            gneed = gneed.more_steps(10)
        if theory is None:
            rows.append(_untestable("d", _CLAIM_D, 3, label, text, "no depth L for this group: theory 1 - 2/L "
                                    "needs one", gneed.override(depth=3).command()))
        elif g["exponent"] is None:
            rows.append(_untestable("d", _CLAIM_D, 3, label, text, f"no fit: {g['reason']}", gneed.command(),
                                    theory))
        else:
            ci = g["exponent_ci"]
            note = (f"escape step ~ gamma^p along eta*(gamma), gamma >= {gamma_min:g}: {g['n_points']} runs, "
                    f"{g['n_censored']} never escaped")
            rows.append(_judged("d", _CLAIM_D, 3, label, theory, text, g["exponent"], ci,
                                within(theory, g["exponent"], ci, tol), note))
    if not rows:
        rows.append(_untestable("d", _CLAIM_D, 3, "", "1 - 2/L", "plateaus: no group of runs to fit",
                                need.command()))
    return rows


def _collapse_rows(store: Any, sweep: str, grid: "SweepGrid", gamma_min: float, tol: float) -> list[ClaimRow]:
    """(e): collapse.analyze_collapse at one eta over gamma >= gamma_min (the sweep's largest group)."""
    need = grid.needs().cover_gammas(gamma_min, 100 * gamma_min, grid.depth)
    try:
        from gammadb.analysis.collapse import analyze_collapse
        from gammadb.analysis.shared import shared_call

        rep = shared_call(analyze_collapse, store, sweep, gamma_min=gamma_min)  # the report's collapse section's
    except AnalysisError as exc:
        return [_untestable("e", _CLAIM_E, 4, "", "s ~ gamma^-1", f"collapse: {exc}", need.command(), -1.0)]
    f = rep.fit
    label = ", ".join(f"{k}={v}" for k, v in rep.family.get("group", {}).items())
    theory = f["theory_exponent_gamma_along_family"]
    if theory is None:
        theory = f["theory_exponent_gamma"]
    text = f"s ~ gamma^{theory:.3g}"
    eta = rep.family.get("eta")
    where = f"at eta={eta:g}, " if eta is not None else ""
    if rep.family.get("other_groups"):
        where = f"largest group only, {where}"
    if f["exponent_gamma"] is None or rep.rms_before is None or rep.rms_after_theory is None:
        stuck = int((rep.runs["status"] == "no_fit").sum())
        gneed = need.more_steps(10) if stuck or rep.rms_after_theory is None else need
        why = f["note"] if f["exponent_gamma"] is None else "no two curves share enough of tau to compare"
        return [_untestable("e", _CLAIM_E, 4, label, text, f"no fit ({where}gamma >= {gamma_min:g}): {why}"
                            + (f"; {stuck} run(s) still on the plateau" if stuck else ""), gneed.command(), theory)]
    shrink = rep.rms_after_theory < rep.rms_before
    ok = shrink and within(theory, f["exponent_gamma"], f["exponent_gamma_ci"], tol)
    note = (f"{where}gamma >= {gamma_min:g}, {f['n_runs']} runs fitted; RMS distance {rep.rms_before:.3g} -> "
            f"{rep.rms_after_theory:.3g} after rescaling by tau" + ("" if shrink else " (no smaller: no collapse)"))
    return [_judged("e", _CLAIM_E, 4, label, theory, text, f["exponent_gamma"], f["exponent_gamma_ci"], ok, note)]

