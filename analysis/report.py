"""One self-contained HTML page for a sweep: the spec, the learning-rate analyses (phase portrait,
eta* fits; when :mod:`gammadb.analysis.optimal_lr` is available), the loss curves, plateaus and staircases,
trajectory collapse and per-step metrics, each with its table.

The page needs nothing from the network: the Vega / Vega-Lite / vega-embed bundle is inlined once
(from vl-convert) and every chart is a spec rendered in place; ``static=True`` instead inlines SVGs
rendered here (no JavaScript at all). A section that cannot be built says why, in the page, and the
rest of the report is still written.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

from gammadb.analysis.report_html import Page, Section, fmt, render
from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.metrics import (
    FEATURE_ALIGNMENT,
    LOSS,
    NTK_ALIGNMENT,
    NTK_DISTANCE,
    SHARPNESS,
    TEST_LOSS,
    WEIGHT_CHANGE,
)
from gammadb.records import FINISHED

if TYPE_CHECKING:
    from gammadb.store import Store

REPORT_METRICS = (WEIGHT_CHANGE, FEATURE_ALIGNMENT, NTK_ALIGNMENT, NTK_DISTANCE, SHARPNESS, TEST_LOSS)


@dataclasses.dataclass(frozen=True)
class ReportSummary:
    path: Optional[Path]
    sweep: str
    bytes: int
    charts: int
    sections: list[dict[str, Any]]  # id, title, ok, charts, notes


# ---------------------------------------------------------------------------------------- helpers
def _guard(page: Page, sec: Section, what: str, fn: Callable[[], None]) -> None:
    """Run one part of a section; a failure becomes a note in the page, not a crash."""
    try:
        fn()
    except GammadbError as exc:
        page.note(sec, f"{what}: {exc}")
        sec.ok = False
    except Exception as exc:  # a report must still be written; GAMMADB_DEBUG=1 shows the traceback
        if os.environ.get("GAMMADB_DEBUG") == "1":
            raise
        page.note(sec, f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        sec.ok = False


# ---------------------------------------------------------------------------------------- sections
def _spec_section(page: Page, store: "Store", sweep: str, runs: pl.DataFrame) -> None:
    from gammadb.analysis.etas import group_columns
    from gammadb.analysis.shared import sweep_record

    sec = page.section("spec", "What was run")
    rec = sweep_record(store, sweep)
    page.text(sec, f"Sweep {rec.name!r}, created {rec.created_at:%Y-%m-%d %H:%M} UTC with gammadb "
                   f"{rec.code_version}; {runs.height} runs.")
    status = runs.group_by("status").agg(pl.len().alias("runs")).sort("status")
    page.table(sec, status, "runs by status")
    keys = group_columns(runs)
    grid = runs.group_by(keys, maintain_order=True).agg(
        pl.col("gamma").n_unique().alias("n_gamma"), pl.col("gamma").min().alias("gamma_min"),
        pl.col("gamma").max().alias("gamma_max"), pl.col("eta").n_unique().alias("n_eta"),
        pl.col("eta").min().alias("eta_min"), pl.col("eta").max().alias("eta_max"),
        pl.col("seed").n_unique().alias("seeds"), pl.col("steps_planned").max().alias("steps"),
        pl.len().alias("runs"))
    page.table(sec, grid, "grid per group of comparable runs")
    spec = json.dumps(rec.spec, indent=2, sort_keys=True, default=str)
    sec.blocks.append(f"<details><summary>sweep spec (JSON)</summary><pre>{html.escape(spec)}</pre></details>")


def _summary_section(page: Page, store: "Store", sweep: str, include_lr: bool) -> None:
    """First on the page: the claims verdict, eta* against gamma with its slopes, the U-curves."""
    sec = page.section("summary", "Summary: the claims, eta* and the learning-rate U-curves")

    def claims() -> None:
        from gammadb.analysis.claims import verdict

        # the defaults of `gammadb analyze claims` and the dashboard: the same verdict everywhere, and
        # the optimal-lr analysis is the page's own (the eta* section and the U-curve share it)
        rep = verdict(store, sweep)
        counts = {v: sum(r.verdict.value == v for r in rep.rows) for v in ("consistent", "inconsistent",
                                                                              "not testable here")}
        page.text(sec, f"Claims of docs/theory.md against this sweep: {counts['consistent']} consistent, "
                       f"{counts['inconsistent']} inconsistent, {counts['not testable here']} not testable here. "
                       f"Rule: {rep.rule}.", "verdict")
        page.table(sec, rep.table(), "claims verdict", folded=False)

    _guard(page, sec, "claims verdict", claims)
    if not include_lr:
        return

    def lr() -> None:
        from gammadb.analysis import charts_lr
        from gammadb.analysis.charts_lr import lr_curve_figure

        chart, info = lr_curve_figure(store, sweep)
        res = _lr_result(store, sweep)
        gi = charts_lr._largest_group(res)
        page.chart(sec, charts_lr.eta_vs_gamma(res, gi),
                   "eta* (pink, with bootstrap intervals) and eta_max (blue) against gamma; solid: fitted power "
                   "laws, their slopes [95% CI] in the subtitle; dashed: the theory slopes 2 and 2/L per regime")
        page.chart(sec, chart, f"loss at step {info['budget_step']} against eta, one line per gamma "
                               f"({info['curves']} gammas, {info['etas']} etas; {info['diverged_cells']} diverged "
                               "cells marked by crosses)")

    _guard(page, sec, "eta* and U-curves", lr)


def _lr_result(store: "Store", sweep: str) -> Any:
    """The optimal-lr analysis, computed once per page (the summary, the U-curve and the eta* section
    share it, within the page's :func:`gammadb.analysis.shared.shared_reads`)."""
    from gammadb.analysis import optimal_lr

    return optimal_lr.analyze(store, sweep)


def broken_law_text(res: Any, group_idx: int) -> str:
    """Whether the broken power law of eta* is shown, by AIC against the two straight-line fits."""
    from gammadb.analysis.fits import BrokenPowerLaw, broken_beats_lines

    b = res.broken.filter(pl.col("group_idx") == group_idx).row(0, named=True)
    bpl = BrokenPowerLaw(b["slope_small"], b["slope_large"], b["knee_gamma"], b["prefactor"], b["n_points"],
                         b["reason"])
    fits = res.fits.filter((pl.col("group_idx") == group_idx) & (pl.col("target") == "eta_star")
                           & pl.col("exponent").is_not_null())
    lines = [(f["prefactor"], f["exponent"], f["gamma_lo"], f["gamma_hi"]) for f in fits.iter_rows(named=True)]
    pts = res.points.filter((pl.col("group_idx") == group_idx) & pl.col("eta_star").is_not_null()
                            & ~pl.col("eta_star_censored"))
    better, why = broken_beats_lines(pts["gamma"].to_numpy(), pts["eta_star"].to_numpy(), bpl, lines)
    if better and b["reason"] is None:
        return (f"Smoothly broken power law of eta*: slope {b['slope_small']:.3g} below the knee at gamma = "
                f"{b['knee_gamma']:.3g}, {b['slope_large']:.3g} above ({why}).")
    return f"Smoothly broken power law of eta*: {b['reason'] or why}."


def _lr_sections(page: Page, store: "Store", sweep: str) -> None:
    sec = page.section("optimal-lr", "Learning rate: phase portrait and eta* fits")
    try:
        from gammadb.analysis import charts_lr, optimal_lr
    except ImportError as exc:
        page.note(sec, f"the optimal-lr analysis is not available in this installation ({exc}); "
                       "run `gammadb analyze optimal-lr` once it is")
        sec.ok = False
        return

    def lr() -> None:
        res = _lr_result(store, sweep)
        for gi in res.groups["group_idx"].to_list()[:charts_lr.MAX_GROUPS]:
            page.chart(sec, charts_lr.phase_portrait(res, gi),
                       f"loss at budget step {res.budget_step} over (gamma, eta); eta* with bootstrap intervals, "
                       "fitted power laws (solid) and theory slopes 2 and 2/L (dashed)")
            page.text(sec, broken_law_text(res, gi), "method")
        for title, df in optimal_lr.report_tables(res):
            if title.startswith("smoothly broken power law"):
                continue  # said in words above, with the AIC criterion
            page.table(sec, df, title)

    _guard(page, sec, "optimal-lr analysis", lr)
    psec = page.section("phases", "Phases: diverged, trained, under-trained, catapult")
    try:
        from gammadb.analysis import phase
    except ImportError as exc:
        page.note(psec, f"the phase analysis is not available in this installation ({exc})")
        psec.ok = False
        return

    def ph() -> None:
        pm = phase.analyze(store, sweep)
        page.chart(psec, charts_lr.phase_chart(pm), f"phase of every (gamma, eta) cell at step {pm.budget_step}")
        for title, df in phase.report_tables(pm):
            page.table(psec, df, title)

    _guard(page, psec, "phase analysis", ph)


def _curves_section(page: Page, store: "Store", sweep: str, runs: pl.DataFrame, family_ids: list[int],
                    fixed_eta: Optional[float], fixed_ids: list[int],
                    plateau_tables: tuple[pl.DataFrame, pl.DataFrame], group_label: str = "") -> None:
    from gammadb.analysis.charts_curves import curves_chart, left_out_note, plateau_marks, split_diverged
    from gammadb.analysis.downsample import curve_bands
    from gammadb.metrics import MetricKey

    sec = page.section("curves", "Loss curves")
    table, drops = plateau_tables

    def one(ids: list[int], caption: str, x: str = "step") -> None:
        caption = f"{caption} [{group_label}]" if group_label else caption
        sub, left_out = split_diverged(runs.filter(pl.col("run_id").is_in(ids)))
        if sub.is_empty():
            raise InvalidSpecError(f"every one of the {left_out} runs diverged: no curve to draw")
        bands = curve_bands(store, sub, MetricKey(LOSS), max_rows=6_000)
        marks = plateau_marks(table.filter(pl.col("run_id").is_in(ids)), drops.filter(pl.col("run_id").is_in(ids)))
        page.chart(sec, curves_chart(bands, marks, x=x, metric="loss", title=caption,
                                     subtitle=left_out_note(left_out, "plot curves --include-diverged")),
                   "seed mean (line) and min..max over seeds and within each log-step bucket (band); "
                   "bars: initial plateau, triangles: drops")

    if family_ids:
        _guard(page, sec, "curves along eta*", lambda: one(family_ids, "along eta*(gamma): each gamma at its best eta"))
        _guard(page, sec, "curves along eta* against tau",
               lambda: one(family_ids, "along eta*(gamma), against tau = eta t / gamma", x="tau"))
    if fixed_eta is not None:
        _guard(page, sec, f"curves at eta = {fixed_eta:g}",
               lambda: one(fixed_ids, f"every gamma at eta = {fixed_eta:g}"))
    if not family_ids and fixed_eta is None:
        page.note(sec, "no finished run to plot")


def _plateau_section(page: Page, rep: Any, error: Optional[str]) -> None:
    sec = page.section("plateaus", "Plateaus and staircases")
    if rep is None:
        page.note(sec, f"plateau analysis: {error}")
        sec.ok = False
        return
    _guard(page, sec, "plateaus", lambda: _plateau_body(page, sec, rep))


def _plateau_body(page: Page, sec: Section, rep: Any) -> None:
    from gammadb.analysis.charts_curves import scaling_chart

    o = rep.options
    page.text(sec, f"Smoothed log loss in log time ({o.to_dict()['smoother']}, bandwidth {o.bandwidth} decades, "
                   f">= {o.min_samples} steps); a drop is steeper than t^-{o.min_slope:g}, extends while steeper "
                   f"than t^-{o.edge_slope:g}, and lowers the loss by >= {o.min_drop} decades. Escape: half way "
                   "down from the starting to the final loss.", "method")
    sc = rep.scaling
    chart = scaling_chart(sc, measure=f"{sc['measure']} (steps)")
    if chart is not None:
        page.chart(sec, chart, f"plateau length against gamma along {sc['along']} (gamma >= {sc['gamma_min']}), "
                               "with the fitted power law")
    rows = []
    for g in sc["groups"]:
        rows.append({"group": fmt(g["group"]) or "all runs", "exponent": g["exponent"],
                     "ci_lo": g["exponent_ci"][0] if g["exponent_ci"] else None,
                     "ci_hi": g["exponent_ci"][1] if g["exponent_ci"] else None,
                     "theory 1-2/L": g["theory_exponent"], "r2": g["r2"], "runs": g["n_points"],
                     "never escaped": g["n_censored"], "reason": g["reason"] or ""})
    if rows:
        page.table(sec, pl.DataFrame(rows), f"plateau length ({sc['measure']}) ~ gamma^p, along {sc['along']}")
    drops = rep.drops.group_by("run_id").agg(
        pl.format("{} ({}→{})", pl.col("step"), pl.col("loss_before").round_sig_figs(3),
                  pl.col("loss_after").round_sig_figs(3)).str.join("; ").alias("drops: step (loss before→after)"))
    t = rep.runs.join(drops, on="run_id", how="left").select(
        "run_id", "gamma", "eta", "seed", "status", "plateau_end_step", "escape_step", "n_drops",
        "drops: step (loss before→after)", "note").sort("gamma", "eta", "seed")
    page.table(sec, t, "per run")


def _collapse_section(page: Page, store: "Store", sweep: str, gamma_min: Optional[float]) -> None:
    from gammadb.analysis.charts_curves import collapse_figure
    from gammadb.analysis.collapse import analyze_collapse
    from gammadb.analysis.shared import shared_call

    sec = page.section("collapse", "Trajectory collapse: tau = eta t / gamma")

    def go() -> None:
        rep = shared_call(analyze_collapse, store, sweep, along="fixed", gamma_min=gamma_min)  # and the claims'
        fam = rep.family
        page.chart(sec, collapse_figure(rep),
                   f"runs at eta = {fmt(fam.get('eta'))}, gamma >= {fmt(gamma_min)}: raw steps, the theory's tau, "
                   f"and each run's fitted time scale (reference run {rep.reference['run_id']})")
        f = rep.fit
        summary = pl.DataFrame([{
            "rms before": rep.rms_before, "rms after tau": rep.rms_after_theory, "rms after fit": rep.rms_after_fit,
            "exponent gamma": f["exponent_gamma"],
            "ci": f["exponent_gamma_ci"], "exponent eta": f["exponent_eta"], "ci eta": f["exponent_eta_ci"],
            "theory": "gamma^-1 eta^1", "r2": f["r2"], "runs": f["n_runs"], "note": f["note"] or ""}])
        page.table(sec, summary, f"RMS distance to the reference ({rep.transform} loss) and the time-scale fit s ~ gamma^b")
        page.table(sec, rep.runs, "per run")
        if fam.get("other_groups"):
            page.note(sec, f"other groups not shown (use `gammadb analyze collapse --where`): {fam['other_groups']}")

    _guard(page, sec, "collapse", go)


def _metric_sections(page: Page, store: "Store", sweep: str, family_ids: list[int]) -> None:
    from gammadb.analysis.charts_curves import metric_figure

    known = set(store.metric_keys()["name"].to_list())
    names = [m for m in REPORT_METRICS if m in known]
    if not names or not family_ids:
        return
    sec = page.section("metrics", "Per-step metrics along eta*(gamma)")
    for name in names:
        def one(name: str = name) -> None:
            chart, info = metric_figure(store, sweep, metric=name, run_ids=family_ids, facet="gamma", max_rows=6000)
            page.chart(sec, chart, f"{name}: one panel per gamma" + (", dashed: 2/eta" if name == SHARPNESS else "")
                       + (f", layers {info['layers']}" if len(info["layers"]) > 1 else ""))

        try:
            one()
        except InvalidSpecError:
            pass  # this sweep does not record the metric
        except GammadbError as exc:
            page.note(sec, f"{name}: {exc}")


# ---------------------------------------------------------------------------------------- page
def build_report(store: "Store", sweep: str, *, static: bool = False, gamma_min: Optional[float] = 1.0,
                 include_lr: bool = True) -> tuple[str, list[Section]]:
    """The report's HTML text and its sections. The sections share their reads: the claims, the
    plateaus, the curves and the collapse all bucket the sweep's loss, read once, and the claims'
    plateau analysis is the plateaus section's (:func:`gammadb.analysis.shared.shared_reads`)."""
    from gammadb.analysis.shared import shared_reads

    with shared_reads(store):
        return _build_report(store, sweep, static=static, gamma_min=gamma_min, include_lr=include_lr)


def _build_report(store: "Store", sweep: str, *, static: bool, gamma_min: Optional[float],
                  include_lr: bool) -> tuple[str, list[Section]]:
    from gammadb.analysis.etas import group_columns, select_family
    from gammadb.analysis.plateaus import analyze_plateaus

    runs = store.runs_frame(sweep)
    page = Page(static)
    # the plateaus of every run, found before the claims: their plateau claim takes its scaling from here
    plateau_rep, plateau_error = None, None
    try:
        plateau_rep = analyze_plateaus(store, sweep, gamma_min=gamma_min)
    except GammadbError as exc:
        plateau_error = str(exc)
    _summary_section(page, store, sweep, include_lr)
    _spec_section(page, store, sweep, runs)
    if include_lr:
        _lr_sections(page, store, sweep)
    finished = runs.filter(pl.col("status").is_in(FINISHED))
    family_ids: list[int] = []
    fixed_eta: Optional[float] = None
    fixed_ids: list[int] = []
    group_label = ""
    if not finished.is_empty():
        keys = group_columns(finished)
        groups = sorted(finished.group_by(keys), key=lambda kg: -kg[1].height)
        biggest = groups[0][1]
        shown = [k for k in keys if finished[k].n_unique() > 1]
        group_label = ", ".join(f"{k}={biggest[k][0]}" for k in shown)
        try:
            family_ids = select_family(biggest, "eta_star", None, keys)["run_id"].to_list()
        except GammadbError:
            family_ids = []
        fixed = select_family(biggest, "fixed", None, keys)
        fixed_eta, fixed_ids = float(fixed["eta"][0]), fixed["run_id"].to_list()
    empty = pl.DataFrame(schema={"run_id": pl.Int64})
    tables = (plateau_rep.runs, plateau_rep.drops) if plateau_rep is not None else (empty, empty)
    if plateau_rep is not None:
        _curves_section(page, store, sweep, runs, family_ids, fixed_eta, fixed_ids, tables, group_label)
    _plateau_section(page, plateau_rep, plateau_error)
    _collapse_section(page, store, sweep, gamma_min)
    _metric_sections(page, store, sweep, family_ids)
    return render(page, store, sweep, runs), page.sections


def write_report(store: "Store", sweep: str, out: Path, *, static: bool = False,
                 gamma_min: Optional[float] = 1.0, include_lr: bool = True) -> ReportSummary:
    """Build the report and write it to ``out`` (atomically: a reader never sees half a page)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InvalidSpecError(f"{out}: the report is an .html file")
    if out.parent and not out.parent.exists():
        raise InvalidSpecError(f"directory {out.parent} does not exist")
    text, sections = build_report(store, sweep, static=static, gamma_min=gamma_min, include_lr=include_lr)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return ReportSummary(out, sweep, len(text.encode()), sum(s.charts for s in sections),
                         [{"id": s.id, "title": s.title, "ok": s.ok, "charts": s.charts, "notes": s.notes}
                          for s in sections])
