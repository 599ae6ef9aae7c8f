"""Altair charts of the learning-rate analyses. Builders return charts and never save them (the CLI
does); every encoding has an explicit type, both axes are logarithmic, and the data are one row per
cell or point (a few thousand rows at most).
"""

from __future__ import annotations

import math
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
    return cells.join(g_edges, on="gamma").join(e_edges, on=["gamma", "eta"])


def _group_title(group: dict[str, Any]) -> str:
    parts = [f"{c}={group[c]}" for c in RUN_COLUMNS if group.get(c) not in (None, "unknown")]
    return ", ".join(parts) or "all runs"


GAMMA_TITLE = "gamma (feature-learning strength)"
ETA_TITLE = "eta (learning rate)"


def _axes(alt: Any, x_field: str = "gamma", y_field: str = "eta", grid: bool = True) -> tuple[Any, Any]:
    """Log-scaled x (gamma) and y (eta) encodings; every layer of a chart uses the same titles so
    Vega-Lite does not join them."""
    x = alt.X(f"{x_field}:Q", title=GAMMA_TITLE).scale(type="log").axis(grid=grid)
    y = alt.Y(f"{y_field}:Q", title=ETA_TITLE).scale(type="log").axis(grid=grid)
    return x, y


# ---------------------------------------------------------------------- lines
def fit_lines(fits: pl.DataFrame, target: str) -> pl.DataFrame:
    """Two endpoints per fitted regime line (a straight line in log-log) of ``target``, and the theory
    guide with the theory exponent through the middle of the fitted line."""
    rows = []
    for f in fits.filter(pl.col("target") == target).iter_rows(named=True):
        if f["exponent"] is None:
            continue
        lo, hi = f["gamma_lo"], f["gamma_hi"]
        line = f"{target} fit, {f['regime'].replace('_', ' ')}: slope {f['exponent']:.2f}"
        for g in (lo, hi):
            rows.append({"gamma": g, "eta": f["prefactor"] * g ** f["exponent"], "line": line, "kind": "fit",
                         "target": target})
        if f["theory_exponent"] is not None:
            mid = math.sqrt(lo * hi)
            anchor = f["prefactor"] * mid ** f["exponent"]
            line = f"theory, {f['regime'].replace('_', ' ')}: slope {f['theory_exponent']:.2f}"
            for g in (lo, hi):
                rows.append({"gamma": g, "eta": anchor * (g / mid) ** f["theory_exponent"], "line": line,
                             "kind": "theory", "target": target})
    return pl.DataFrame(rows, schema={"gamma": pl.Float64, "eta": pl.Float64, "line": pl.String,
                                      "kind": pl.String, "target": pl.String})


def _line_layers(alt: Any, lines: pl.DataFrame, color: Optional[str] = None, grid: bool = True) -> list[Any]:
    if lines.is_empty():
        return []
    x, y = _axes(alt, grid=grid)
    base = alt.Chart(lines)
    enc = dict(x=x, y=y, detail=alt.Detail("line:N"), tooltip=[alt.Tooltip("line:N")])
    col = alt.value(color) if color else alt.Color("target:N", title="target").scale(
        domain=list(TARGET_COLORS), range=list(TARGET_COLORS.values()))
    fit = base.transform_filter(alt.datum.kind == "fit").mark_line(strokeWidth=2).encode(color=col, **enc)
    theory = base.transform_filter(alt.datum.kind == "theory").mark_line(
        strokeDash=[6, 4], strokeWidth=1.5).encode(color=alt.value("#555555"), **enc)
    return [fit, theory]


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
        color=alt.Color("value:Q", title=f"loss ({crit}) at step {result.budget_step}").scale(
            type="log", scheme="viridis"),
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
    star = pts.select("gamma", pl.col("eta_star").alias("eta"), "eta_star_lo", "eta_star_hi", "eta_star_censored")
    bars = alt.Chart(star.filter(pl.col("eta_star_lo").is_not_null())).mark_rule(color="#ffffff").encode(
        x=x, y=_axes(alt, y_field="eta_star_lo", grid=False)[1], y2=alt.Y2("eta_star_hi:Q"))
    dots = alt.Chart(star).mark_point(filled=True, size=50, color=TARGET_COLORS["eta_star"],
                                      stroke="#ffffff", strokeWidth=1).encode(
        x=x, y=y, shape=alt.Shape("eta_star_censored:N", title="eta* at grid edge"),
        tooltip=[alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", title="eta*", format=".3g")])
    lines = _line_layers(alt, fit_lines(result.fits.filter(pl.col("group_idx") == group_idx), "eta_star"),
                         color=TARGET_COLORS["eta_star"], grid=False)
    return alt.layer(heat, div, cross, bars, dots, *lines).resolve_scale(color="independent").properties(
        title=f"{result.sweep}: phase portrait ({_group_title(group)}); dark x = diverged",
        width=360, height=300)


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
    ]).filter(pl.col("eta").is_not_null())
    x, y = _axes(alt)
    color = alt.Color("target:N", title="target").scale(domain=list(TARGET_COLORS), range=list(TARGET_COLORS.values()))
    dots = alt.Chart(long).mark_point(filled=True, size=60).encode(
        x=x, y=y, color=color, shape=alt.Shape("censored:N", title="bound (grid edge)"),
        tooltip=[alt.Tooltip("target:N"), alt.Tooltip("gamma:Q", format=".3g"), alt.Tooltip("eta:Q", format=".3g")])
    bars = alt.Chart(long.filter(pl.col("eta_star_lo").is_not_null())).mark_rule().encode(
        x=x, y=_axes(alt, y_field="eta_star_lo")[1], y2=alt.Y2("eta_star_hi:Q"), color=color)
    fits = result.fits.filter(pl.col("group_idx") == group_idx)
    lines = _line_layers(alt, pl.concat([fit_lines(fits, "eta_star"), fit_lines(fits, "eta_max")]))
    return alt.layer(bars, dots, *lines).properties(
        title=f"eta* and eta_max vs gamma ({_group_title(group)})", width=360, height=300)


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
        color=alt.Color("phase:N", title="phase").scale(domain=list(PHASE_COLORS), range=list(PHASE_COLORS.values())),
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
    return alt.layer(rect, cross, line).properties(
        title=f"{pm.sweep}: phases at step {pm.budget_step} ({_group_title(group)})", width=420, height=320)


def phase_chart(pm: "PhaseMap") -> "alt.VConcatChart":
    alt = _alt()
    return alt.vconcat(*(phase_panel(pm, i) for i in pm.groups["group_idx"].to_list()[:MAX_GROUPS]))
