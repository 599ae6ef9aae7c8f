"""Altair charts of the learning-rate analyses. Builders return charts and never save them (the CLI
does); every encoding has an explicit type, both axes are logarithmic, and the data are one row per
cell or point (a few thousand rows at most).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import polars as pl

from gammadb.records import RUN_COLUMNS

if TYPE_CHECKING:
    import altair as alt

    from gammadb.analysis.optimal_lr import OptimalLr
    from gammadb.analysis.phase import PhaseMap

MAX_GROUPS = 12  # one row of panels per group; beyond this a chart stops being readable
DIVERGED_FILL = "#2b2b2b"
PHASE_COLORS = {"diverged": DIVERGED_FILL, "catapult": "#e6842a", "trained": "#2f9e44", "under-trained": "#c9d1d9"}
TARGET_COLORS = {"eta_star": "#d6336c", "eta_max": "#1c7ed6"}
_HALF_STEP = 0.125  # half a cell (in decades) where an axis has a single value


def _alt():
    import altair as alt

    return alt


# ---------------------------------------------------------------------- cell geometry
def _log_edges(values: list[float]) -> tuple[list[float], list[float]]:
    """Lower and upper edges of cells centred (in log10) on sorted distinct ``values``."""
    lv = np.log10(np.asarray(values, dtype=float))
    if lv.size == 1:
        return [10 ** (lv[0] - _HALF_STEP)], [10 ** (lv[0] + _HALF_STEP)]
    mid = (lv[1:] + lv[:-1]) / 2
    lo = np.concatenate([[lv[0] - (mid[0] - lv[0])], mid])
    hi = np.concatenate([mid, [lv[-1] + (lv[-1] - mid[-1])]])
    return list(10**lo), list(10**hi)


def cell_rects(cells: pl.DataFrame) -> pl.DataFrame:
    """Add gamma_lo/gamma_hi and eta_lo/eta_hi: cell edges at the geometric midpoints between grid
    values (eta edges per gamma column, as the eta grid may differ between gammas)."""
    if cells.is_empty():
        return cells.with_columns(*(pl.lit(None, pl.Float64).alias(c) for c in ("gamma_lo", "gamma_hi", "eta_lo", "eta_hi")))
    gam = sorted(cells["gamma"].unique().to_list())
    glo, ghi = _log_edges(gam)
    g_edges = pl.DataFrame({"gamma": gam, "gamma_lo": glo, "gamma_hi": ghi})
    parts = []
    for (gamma,), sub in cells.group_by(["gamma"]):
        etas = sorted(sub["eta"].unique().to_list())
        elo, ehi = _log_edges(etas)
        parts.append(pl.DataFrame({"gamma": [gamma] * len(etas), "eta": etas, "eta_lo": elo, "eta_hi": ehi}))
    e_edges = pl.concat(parts)
    # in the cells' order: a chart's data (and the page holding it) is the same from one run to the next
    return (cells.join(g_edges, on="gamma", maintain_order="left")
            .join(e_edges, on=["gamma", "eta"], maintain_order="left"))


def _group_title(group: dict[str, Any]) -> str:
    parts = [f"{c}={group[c]}" for c in RUN_COLUMNS if group.get(c) not in (None, "unknown")]
    return ", ".join(parts) or "all runs"


GAMMA_TITLE = "gamma (feature-learning strength)"
ETA_TITLE = "eta (learning rate)"


def _axes(alt: Any, x_field: str = "gamma", y_field: str = "eta", grid: bool = True) -> tuple[Any, Any]:
    """Log-scaled x (gamma) and y (eta) encodings; every layer of a chart uses the same titles so
    Vega-Lite does not join them."""
    # keyword arguments, not Altair's chained setters (.scale().axis()): each setter call reads its
    # class's signature and docstring and copies the channel, 0.1 s over a report's charts
    x = alt.X(f"{x_field}:Q", title=GAMMA_TITLE, scale=alt.Scale(type="log"), axis=alt.Axis(grid=grid))
    y = alt.Y(f"{y_field}:Q", title=ETA_TITLE, scale=alt.Scale(type="log"), axis=alt.Axis(grid=grid))
    return x, y


# ---------------------------------------------------------------------- lines
TARGET_NAMES = {"eta_star": "eta*", "eta_max": "eta_max"}
LINE_DASHES = {"fit": [1, 0], "theory": [6, 4]}
THEORY_COLOR = "#555555"


def _ci_text(lo: Any, hi: Any) -> str:
    return f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""


def fit_lines(fits: pl.DataFrame, target: str) -> pl.DataFrame:
    """Two endpoints per fitted regime line (a straight line in log-log) of ``target``, and the theory
    guide with the theory exponent through the middle of the fitted line. Each (target, regime, kind)
    is its own line (``line``), so lines of different regimes or targets are never joined; ``label``
    is the slope as written in the chart's subtitle and tooltip ("fit 2.03 [1.99, 2.17]", "theory 2"),
    ``end`` marks the endpoint that carries it."""
    rows = []
    name = TARGET_NAMES.get(target, target)
    for f in fits.filter(pl.col("target") == target).iter_rows(named=True):
        if f["exponent"] is None:
            continue
        lo, hi = f["gamma_lo"], f["gamma_hi"]
        regime = f["regime"].replace("_", " ")
        label = f"{name} fit {f['exponent']:.3g}{_ci_text(f.get('exponent_lo'), f.get('exponent_hi'))}"
        for g, end in ((lo, False), (hi, True)):
            rows.append({"gamma": g, "eta": f["prefactor"] * g ** f["exponent"], "line": f"{target} fit {regime}",
                         "kind": "fit", "target": target, "label": label, "end": end})
        if f["theory_exponent"] is not None:
            mid = math.sqrt(lo * hi)
            anchor = f["prefactor"] * mid ** f["exponent"]
            label = f"theory {f['theory_exponent']:.3g}"
            for g, end in ((lo, True), (hi, False)):
                rows.append({"gamma": g, "eta": anchor * (g / mid) ** f["theory_exponent"],
                             "line": f"{target} theory {regime}", "kind": "theory", "target": target,
                             "label": label, "end": end})
    return pl.DataFrame(rows, schema={"gamma": pl.Float64, "eta": pl.Float64, "line": pl.String,
                                      "kind": pl.String, "target": pl.String, "label": pl.String,
                                      "end": pl.Boolean})


def _line_layers(alt: Any, lines: pl.DataFrame, color: Optional[str] = None, grid: bool = True) -> list[Any]:
    """Fitted lines (solid, coloured by target) and theory lines (dashed, grey), and a 'line' legend
    for the two kinds whose dashed entry names the theory slopes. The fitted slopes go in the chart's
    subtitle (:func:`slope_lines`): written on the lines they crowded each other, the cells of a heat
    map and, on a narrow chart, the legend."""
    if lines.is_empty():
        return []
    x, y = _axes(alt, grid=grid)
    base = alt.Chart(lines)
    theory = sorted({lab.removeprefix("theory ") for lab in lines.filter(pl.col("kind") == "theory")["label"]},
                    key=lambda t: -float(t))
    legend = alt.Legend(labelExpr=f"datum.label == 'theory' ? {_js('theory: slope ' + ', '.join(theory))} : datum.label",
                        labelLimit=300) if theory else alt.Legend()
    dash = alt.StrokeDash("kind:N", title="line", legend=legend,
                          scale=alt.Scale(domain=list(LINE_DASHES), range=list(LINE_DASHES.values())))
    enc = dict(x=x, y=y, detail=alt.Detail("line:N"), strokeDash=dash, tooltip=[alt.Tooltip("label:N")])
    col = alt.value(color) if color else alt.Color("target:N", title="target", scale=alt.Scale(
        domain=list(TARGET_COLORS), range=list(TARGET_COLORS.values())))
    fit = base.transform_filter(alt.datum.kind == "fit").mark_line(strokeWidth=2).encode(color=col, **enc)
    guide = base.transform_filter(alt.datum.kind == "theory").mark_line(strokeWidth=1.5).encode(
        color=alt.value(THEORY_COLOR), **enc)
    return [fit, guide]


def slope_lines(lines: pl.DataFrame) -> list[str]:
    """One subtitle line per target of :func:`fit_lines` rows: its fitted slopes with their 95%
    intervals and regimes, e.g. "eta* slope 1.96 [1.94, 1.98] at small gamma, 0.709 [0.689, 0.729]
    at large gamma"."""
    out = []
    fits = lines.filter((pl.col("kind") == "fit") & pl.col("end"))
    for target in [t for t in TARGET_NAMES if t in fits["target"].to_list()] + sorted(
            set(fits["target"].to_list()) - set(TARGET_NAMES)):
        name = TARGET_NAMES.get(target, target)
        parts = [f"{r['label'].removeprefix(name + ' fit ')} at {r['line'].removeprefix(target + ' fit ')}"
                 for r in fits.filter(pl.col("target") == target).iter_rows(named=True)]
        out.append(f"{name} slope " + ", ".join(parts))
    return out


def _bound_shape(alt: Any, frame: pl.DataFrame, col: str) -> dict[str, Any]:
    """A shape channel telling estimates from grid-edge bounds, only when the frame holds both (a
    legend entry for a constant field says nothing)."""
    if frame.is_empty() or frame[col].n_unique() < 2:
        return {}
    return {"shape": alt.Shape("point:N", title="point", scale=alt.Scale(
        domain=["estimate", "bound (grid edge)"], range=["circle", "triangle-up"]))}


def _point_kind(col: str) -> pl.Expr:
    return pl.when(pl.col(col)).then(pl.lit("bound (grid edge)")).otherwise(pl.lit("estimate")).alias("point")


# ---------------------------------------------------------------------- optimal-lr charts
def phase_portrait(result: "OptimalLr", group_idx: int = 0) -> "alt.LayerChart":
    """gamma x eta heat map of the seed-mean loss at the budget (log colour), diverged cells filled
    dark and crossed, eta* with its bootstrap interval, the fitted eta* power laws (solid) and the
    theory slopes (dashed) over it."""
    alt = _alt()
    cells = cell_rects(result.cells.filter(pl.col("group_idx") == group_idx))
    pts = result.points.filter((pl.col("group_idx") == group_idx) & pl.col("eta_star").is_not_null())
    group = result.groups.filter(pl.col("group_idx") == group_idx).row(0, named=True)
    crit = result.settings.criterion.value
    x, y = _axes(alt, grid=False)
    xr, yr = _axes(alt, "gamma_lo", "eta_lo", grid=False)
    heat = alt.Chart(cells.filter(~pl.col("diverged") & (pl.col("value") > 0))).mark_rect().encode(
        x=xr, x2=alt.X2("gamma_hi:Q"), y=yr, y2=alt.Y2("eta_hi:Q"),
        color=alt.Color("value:Q", title=f"loss ({crit}) at step {result.budget_step}",
                        scale=alt.Scale(type="log", scheme="viridis")),
        tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g"),
                 alt.Tooltip("value:Q", format=".3g"), alt.Tooltip("n_seeds:Q")],
    )
    div_cells = cells.filter(pl.col("diverged"))
    div = alt.Chart(div_cells).mark_rect(color=DIVERGED_FILL).encode(
        x=xr, x2=alt.X2("gamma_hi:Q"), y=yr, y2=alt.Y2("eta_hi:Q"),
        tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g"),
                 alt.Tooltip("n_diverged:Q", title="seeds diverged")],
    )
    cross = alt.Chart(div_cells).mark_point(shape="cross", color="#ffffff", size=30, opacity=0.8).encode(x=x, y=y)
    star = pts.select("gamma", pl.col("eta_star").alias("eta"), "eta_star_lo", "eta_star_hi", "eta_star_censored",
                      _point_kind("eta_star_censored"))
    bars = alt.Chart(star.filter(pl.col("eta_star_lo").is_not_null())).mark_rule(color="#ffffff").encode(
        x=x, y=_axes(alt, y_field="eta_star_lo", grid=False)[1], y2=alt.Y2("eta_star_hi:Q"))
    dots = alt.Chart(star).mark_point(filled=True, size=50, color=TARGET_COLORS["eta_star"],
                                      stroke="#ffffff", strokeWidth=1).encode(
        x=x, y=y, **_bound_shape(alt, star, "eta_star_censored"),
        tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", title="eta*", format=".3g")])
    fitted = fit_lines(result.fits.filter(pl.col("group_idx") == group_idx), "eta_star")
    lines = _line_layers(alt, fitted, color=TARGET_COLORS["eta_star"], grid=False)
    # the layer's settings as constructor arguments: each .resolve_scale() / .properties() deep-copies
    # every layer (a tenth of a report's time went to such copies)
    return alt.layer(
        heat, div, cross, bars, dots, *lines, resolve=alt.Resolve(scale=alt.ScaleResolveMap(color="independent")),
        title=alt.Title(f"loss at step {result.budget_step} over (gamma, eta), sweep {result.sweep}",
                        subtitle=[_group_title(group), "dark x: diverged; pink: eta* with its bootstrap interval",
                                  *slope_lines(fitted)]),
        width=300, height=280)


def eta_vs_gamma(result: "OptimalLr", group_idx: int = 0) -> "alt.LayerChart":
    """eta* (with its bootstrap interval) and eta_max against gamma on log-log axes, with the fitted
    power laws and the theory slopes."""
    alt = _alt()
    pts = result.points.filter(pl.col("group_idx") == group_idx)
    group = result.groups.filter(pl.col("group_idx") == group_idx).row(0, named=True)
    long = pl.concat([
        pts.select("gamma", pl.col("eta_star").alias("eta"), "eta_star_lo", "eta_star_hi",
                   pl.col("eta_star_censored").alias("censored"), pl.lit("eta_star").alias("target")),
        pts.select("gamma", pl.col("eta_max").alias("eta"), pl.lit(None, pl.Float64).alias("eta_star_lo"),
                   pl.lit(None, pl.Float64).alias("eta_star_hi"), pl.col("eta_max_censored").alias("censored"),
                   pl.lit("eta_max").alias("target")),
    ]).filter(pl.col("eta").is_not_null()).with_columns(_point_kind("censored"))
    x, y = _axes(alt)
    color = alt.Color("target:N", title="target",
                      scale=alt.Scale(domain=list(TARGET_COLORS), range=list(TARGET_COLORS.values())))
    dots = alt.Chart(long).mark_point(filled=True, size=60).encode(
        x=x, y=y, color=color, **_bound_shape(alt, long, "censored"),
        tooltip=[alt.Tooltip("target:N"), alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g")])
    bars = alt.Chart(long.filter(pl.col("eta_star_lo").is_not_null())).mark_rule().encode(
        x=x, y=_axes(alt, y_field="eta_star_lo")[1], y2=alt.Y2("eta_star_hi:Q"), color=color)
    fits = result.fits.filter(pl.col("group_idx") == group_idx)
    fitted = pl.concat([fit_lines(fits, "eta_star"), fit_lines(fits, "eta_max")])
    lines = _line_layers(alt, fitted)
    return alt.layer(
        bars, dots, *lines, resolve=alt.Resolve(scale=alt.ScaleResolveMap(color="shared")),
        title=alt.Title(f"eta* and eta_max against gamma, sweep {result.sweep}",
                        subtitle=[_group_title(group), "solid: fitted power law, slope [95% CI]; dashed: theory",
                                  *slope_lines(fitted)]),
        width=300, height=280)


def optimal_lr_chart(result: "OptimalLr") -> "alt.VConcatChart":
    """Per group (up to MAX_GROUPS): the phase portrait beside eta*/eta_max against gamma."""
    alt = _alt()
    rows = [alt.hconcat(phase_portrait(result, i), eta_vs_gamma(result, i)).resolve_scale(
                color="independent", shape="independent")
            for i in result.groups["group_idx"].to_list()[:MAX_GROUPS]]
    return alt.vconcat(*rows).properties(
        title=f"optimal learning rate, sweep {result.sweep}, budget step {result.budget_step}")


# ---------------------------------------------------------------------- phase chart
def phase_panel(pm: "PhaseMap", group_idx: int = 0) -> "alt.LayerChart":
    alt = _alt()
    cells = cell_rects(pm.cells.filter(pl.col("group_idx") == group_idx))
    bounds = pm.boundaries.filter(pl.col("group_idx") == group_idx)
    group = pm.groups.filter(pl.col("group_idx") == group_idx).row(0, named=True)
    x, y = _axes(alt, grid=False)
    xr, yr = _axes(alt, "gamma_lo", "eta_lo", grid=False)
    rect = alt.Chart(cells).mark_rect(stroke="#ffffff", strokeWidth=0.3).encode(
        x=xr, x2=alt.X2("gamma_hi:Q"), y=yr, y2=alt.Y2("eta_hi:Q"),
        color=alt.Color("phase:N", title="phase",
                        scale=alt.Scale(domain=list(PHASE_COLORS), range=list(PHASE_COLORS.values()))),
        tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g"),
                 alt.Tooltip("phase:N"), alt.Tooltip("loss_ratio:Q", format=".3g"),
                 alt.Tooltip("peak_ratio:Q", format=".3g"), alt.Tooltip("n_seeds:Q")],
    )
    cross = alt.Chart(cells.filter(pl.col("phase") == "diverged")).mark_point(
        shape="cross", color="#ffffff", size=30, opacity=0.8).encode(x=x, y=y)
    edges = pl.concat([
        bounds.select("gamma", pl.col("eta_lower").alias("eta"), pl.lit("eta_lower (left the plateau)").alias("edge")),
        bounds.select("gamma", pl.col("eta_upper").alias("eta"), pl.lit("eta_upper (last trainable)").alias("edge")),
    ]).filter(pl.col("eta").is_not_null())
    line = alt.Chart(edges).mark_line(point={"color": "#000000"}, color="#000000", strokeWidth=1.5).encode(
        x=x, y=y, strokeDash=alt.StrokeDash("edge:N", title="band edge"),
        tooltip=[alt.Tooltip("edge:N"), alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g")])
    return alt.layer(
        rect, cross, line,
        title=f"{pm.sweep}: phases at step {pm.budget_step} ({_group_title(group)})", width=420, height=320)


def phase_chart(pm: "PhaseMap") -> "alt.VConcatChart":
    alt = _alt()
    return alt.vconcat(*(phase_panel(pm, i) for i in pm.groups["group_idx"].to_list()[:MAX_GROUPS]))


# ---------------------------------------------------------------------- learning-rate U-curve
def lr_curve_table(result: "OptimalLr", seeds: Optional[pl.DataFrame] = None, group_idx: int = 0) -> pl.DataFrame:
    """One row per (gamma, eta) of a group: loss (the seed-mean criterion at the budget, as eta* is
    chosen from; null where a seed diverged), lo / hi (min / max over the seeds when ``seeds``, a
    per-run frame with gamma, eta, value and diverged, is given; else the mean), diverged, n_seeds."""
    cells = result.cells.filter(pl.col("group_idx") == group_idx).select(
        "gamma", "eta", pl.col("value").alias("loss"), "diverged", "n_seeds", "n_diverged")
    if seeds is not None and not seeds.is_empty():
        # the cells' eta is 10**log10(eta): match on a rounded log, not on float equality
        key = [pl.col("gamma").log10().round(6).alias("_g"), pl.col("eta").log10().round(6).alias("_e")]
        spread = seeds.filter(~pl.col("diverged") & pl.col("value").is_finite()).group_by(*key).agg(
            pl.col("value").min().alias("lo"), pl.col("value").max().alias("hi"))
        cells = cells.with_columns(*key).join(spread, on=["_g", "_e"], how="left").drop("_g", "_e")
    else:
        cells = cells.with_columns(pl.col("loss").alias("lo"), pl.col("loss").alias("hi"))
    return cells.with_columns(
        pl.when(pl.col("diverged")).then(None).otherwise(pl.col("lo")).alias("lo"),
        pl.when(pl.col("diverged")).then(None).otherwise(pl.col("hi")).alias("hi"),
    ).sort("gamma", "eta")


def lr_curve_chart(result: "OptimalLr", seeds: Optional[pl.DataFrame] = None,
                   group_idx: int = 0) -> "alt.LayerChart":
    """The learning-rate U-curve: loss at the budget against eta on log-log axes, one line per gamma
    (colour on a log scale), the seed mean as the line and min..max over seeds as the band, eta* of
    each gamma as a dot, and diverged etas as crosses along the top of the chart."""
    from gammadb.analysis.charts_curves import gamma_color

    alt = _alt()
    t = lr_curve_table(result, seeds, group_idx)
    ok = t.filter(pl.col("loss").is_not_null() & (pl.col("loss") > 0))
    if ok.is_empty():
        from gammadb.errors import AnalysisError

        raise AnalysisError(f"sweep {result.sweep!r}: no (gamma, eta) trained without diverging: no U-curve to draw")
    top = float(ok["hi"].fill_null(ok["loss"]).max()) * 2.0
    band_rows = ok.with_columns(pl.when(pl.col("lo") > 0).then(pl.col("lo")).otherwise(pl.col("loss")).alias("lo"),
                                pl.col("hi").fill_null(pl.col("loss")))
    div = t.filter(pl.col("diverged")).with_columns(pl.lit(top).alias("loss"), pl.lit("diverged").alias("mark"))
    group = result.groups.filter(pl.col("group_idx") == group_idx).row(0, named=True)
    stars = result.points.filter((pl.col("group_idx") == group_idx) & pl.col("eta_star").is_not_null()
                                 & pl.col("loss_at_eta_star").is_not_null() & (pl.col("loss_at_eta_star") > 0))
    x = alt.X("eta:Q", title=ETA_TITLE, scale=alt.Scale(type="log"), axis=alt.Axis(format=".0e"))
    y = alt.Y("loss:Q", title=f"loss ({result.settings.criterion.value}) at step {result.budget_step}",
              scale=alt.Scale(type="log"))
    tip = [alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g"),
           alt.Tooltip("loss:Q", format=".4g"), alt.Tooltip("lo:Q", format=".4g"), alt.Tooltip("hi:Q", format=".4g"),
           alt.Tooltip("n_seeds:Q", title="seeds")]
    band = alt.Chart(band_rows).mark_area(opacity=0.15).encode(
        x=x, y=alt.Y("lo:Q", scale=alt.Scale(type="log")), y2=alt.Y2("hi:Q"), fill=gamma_color("gamma", legend=False, channel="fill"),
        detail=alt.Detail("gamma:N"))
    # the line's stroke carries the gamma legend, a gradient; fills carry none (see gamma_color)
    line = alt.Chart(ok).mark_line(point=alt.OverlayMarkDef(size=18, filled=True), strokeWidth=1.6).encode(
        x=x, y=y, stroke=gamma_color("gamma", channel="stroke"), detail=alt.Detail("gamma:N"), tooltip=tip)
    layers: list[Any] = [band, line]
    marker = alt.Shape("mark:N", title="marker", scale=alt.Scale(domain=["eta*", "diverged"], range=["diamond", "cross"]))
    if not stars.is_empty():
        layers.append(alt.Chart(stars.select("gamma", pl.col("eta_star").alias("eta"),
                                             pl.col("loss_at_eta_star").alias("loss"), pl.lit("eta*").alias("mark")))
                      .mark_point(shape="diamond", filled=True, size=70, stroke="#000000", strokeWidth=0.6).encode(
            x=x, y=y, fill=gamma_color("gamma", legend=False, channel="fill"),
            shape=marker, tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", title="eta*", format=".3g")]))
    if not div.is_empty():
        layers.append(alt.Chart(div.select("gamma", "eta", "loss", "n_diverged", "n_seeds", "mark")).mark_point(
            shape="cross", size=40, filled=True, opacity=0.8).encode(
            x=x, y=alt.Y("loss:Q", scale=alt.Scale(type="log")), fill=gamma_color("gamma", legend=False, channel="fill"),
            shape=marker, tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g"),
                     alt.Tooltip("n_diverged:Q", title="seeds diverged")]))
    n_seeds = int(t["n_seeds"].max())
    seed_txt = f"line: mean over {n_seeds} seeds, band: min..max" if n_seeds > 1 else "one seed"
    return alt.layer(
        *layers,
        title=alt.Title(f"loss at step {result.budget_step} against eta, one line per gamma, sweep {result.sweep}",
                        subtitle=[_group_title(group), f"{seed_txt}; diamond: eta*; cross along the top: "
                                                        "an eta where a seed diverged"]),
        width=460, height=320)


def lr_curve_figure(store: Any, sweep: str, *, budget: Optional[int] = None,
                    settings: Optional[Any] = None) -> tuple["alt.Chart", dict[str, Any]]:
    """The U-curve of ``sweep`` (its largest group of comparable runs) at ``budget``, and a summary.
    The analysis is the page's own (:func:`gammadb.analysis.optimal_lr.analysis`: eta_conv's scan
    window is the sweep's, which the curve does not draw)."""
    from gammadb.analysis import optimal_lr

    s = settings or optimal_lr.Settings()
    table, res = optimal_lr.analysis(store, sweep, budget=budget, settings=s)
    seeds = optimal_lr.with_value(table.frame, s.criterion).select("gamma", "eta", "value", "diverged")
    gi = _largest_group(res)
    chart = lr_curve_chart(res, seeds, gi)
    cells = res.cells.filter(pl.col("group_idx") == gi)
    return chart, {"curves": cells["gamma"].n_unique(), "etas": cells["eta"].n_unique(),
                   "budget_step": res.budget_step, "diverged_cells": int(cells["diverged"].sum()),
                   "groups": res.groups.height}


def _largest_group(res: "OptimalLr") -> int:
    sizes = res.cells.group_by("group_idx").agg(pl.len().alias("n")).sort(["n", "group_idx"], descending=[True, False])
    return int(sizes["group_idx"][0])


# ---------------------------------------------------------------------- comparing sweeps
#: One colour per compared sweep, in the order given (Tableau 10).
SWEEP_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                "#9c755f", "#bab0ac")


def slope_text(result: "OptimalLr", group_idx: Optional[int] = None) -> str:
    """The fitted eta* exponents of a sweep's largest group (or ``group_idx``), one per regime, as
    "eta* slope 1.98 [1.9, 2.1] (small gamma), 0.51 (large gamma)"; "no eta* fit" when none fitted."""
    gi = _largest_group(result) if group_idx is None else group_idx
    fits = result.fits.filter((pl.col("group_idx") == gi) & (pl.col("target") == "eta_star")
                              & pl.col("exponent").is_not_null())
    parts = [f"{f['exponent']:.3g}{_ci_text(f['exponent_lo'], f['exponent_hi'])} ({f['regime'].replace('_', ' ')})"
             for f in fits.iter_rows(named=True)]
    return "eta* slope " + ", ".join(parts) if parts else "no eta* fit"


def compare_tables(results: "Mapping[str, OptimalLr]") -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """What :func:`compare_chart` draws, from each sweep's largest group of comparable runs: eta* per
    (sweep, gamma) (uncensored or a bound), the fitted eta* lines per sweep, and the U-curve cells
    (sweep, gamma, eta, loss; diverged cells left out)."""
    stars, lines, curves = [], [], []
    for name, res in results.items():
        gi = _largest_group(res)
        pts = res.points.filter((pl.col("group_idx") == gi) & pl.col("eta_star").is_not_null())
        stars.append(pts.select(pl.lit(name).alias("sweep"), "gamma", pl.col("eta_star").alias("eta"),
                                pl.col("eta_star_censored").alias("censored")).with_columns(_point_kind("censored")))
        fl = fit_lines(res.fits.filter(pl.col("group_idx") == gi), "eta_star").filter(pl.col("kind") == "fit")
        lines.append(fl.select(pl.lit(name).alias("sweep"), "gamma", "eta",
                               (pl.lit(name + " ") + pl.col("line")).alias("line"), "label"))
        cells = res.cells.filter((pl.col("group_idx") == gi) & ~pl.col("diverged") & pl.col("value").is_not_null()
                                 & (pl.col("value") > 0))
        curves.append(cells.select(pl.lit(name).alias("sweep"), "gamma", "eta", pl.col("value").alias("loss")))
    return (pl.concat(stars, how="diagonal_relaxed"), pl.concat(lines, how="diagonal_relaxed"),
            pl.concat(curves, how="diagonal_relaxed"))


def compare_chart(results: "Mapping[str, OptimalLr]") -> "alt.HConcatChart":
    """Two or more sweeps overlaid, one colour per sweep: eta* against gamma (log-log, fitted power laws
    solid, the fitted slopes in the legend) beside the learning-rate U-curves (loss at the budget
    against eta, one line per (sweep, gamma)). Each sweep contributes its largest group of runs."""
    from gammadb.errors import AnalysisError

    alt = _alt()
    if not results:
        raise AnalysisError("no sweep to compare")
    names = list(results)
    stars, lines, curves = compare_tables(results)
    labels = [f"{n}: {slope_text(results[n])}" for n in names]
    legend = {n: lab for n, lab in zip(names, labels)}
    palette = [SWEEP_COLORS[i % len(SWEEP_COLORS)] for i in range(len(names))]
    # label expression: the legend shows each sweep with its fitted slopes
    expr = " : ".join(f"datum.value === {_js(n)} ? {_js(legend[n])}" for n in names) + " : datum.value"
    color = alt.Color("sweep:N", title="sweep", scale=alt.Scale(domain=names, range=palette), legend=alt.Legend(
        labelExpr=expr, labelLimit=600, orient="bottom", direction="vertical"))
    x, y = _axes(alt)
    tip = [alt.Tooltip("sweep:N"), alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g")]
    dots = alt.Chart(stars).mark_point(filled=True, size=60).encode(
        x=x, y=y, color=color, **_bound_shape(alt, stars, "censored"), tooltip=tip)
    joined = alt.Chart(stars).mark_line(strokeWidth=0.8, opacity=0.5, strokeDash=[2, 2]).encode(
        x=x, y=y, color=color, detail=alt.Detail("sweep:N"))
    layers: list[Any] = [joined, dots]
    if not lines.is_empty():
        layers.append(alt.Chart(lines).mark_line(strokeWidth=2).encode(
            x=x, y=y, color=color, detail=alt.Detail("line:N"), tooltip=[alt.Tooltip("sweep:N"), alt.Tooltip("label:N")]))
    budgets = ", ".join(f"{n} {results[n].budget_step}" for n in names)
    left = alt.layer(*layers).properties(
        title=alt.Title("eta* against gamma", subtitle=["solid: fitted power law; dotted: joins the points",
                                                        f"budget step: {budgets}"]),
        width=340, height=300)
    ex = alt.X("eta:Q", title=ETA_TITLE, scale=alt.Scale(type="log"), axis=alt.Axis(format=".0e"))
    ly = alt.Y("loss:Q", title=f"loss ({next(iter(results.values())).settings.criterion.value}) at the budget",
               scale=alt.Scale(type="log"))
    right = alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=18, filled=True), strokeWidth=1.4).encode(
        x=ex, y=ly, color=color, detail=alt.Detail("gamma:N"),
        tooltip=[*tip, alt.Tooltip("loss:Q", format=".4g")]).properties(
        title=alt.Title("loss at the budget against eta", subtitle="one line per (sweep, gamma); diverged etas left out"),
        width=340, height=300)
    return alt.hconcat(left, right).resolve_scale(color="shared").properties(
        title=f"sweeps compared: {', '.join(names)}")


def _js(s: str) -> str:
    """A string literal for a Vega expression."""
    import json

    return json.dumps(s)
