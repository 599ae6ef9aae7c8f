"""Altair charts of loss curves, trajectory collapse and per-step metrics.

Builders take already-reduced polars frames (see :mod:`gammadb.analysis.downsample`: a few thousand rows),
return an ``alt.Chart`` (or a compound chart) and never save; :func:`gammadb.analysis.charts_export.save_chart`
does that.
Encodings carry explicit types and log scales are explicit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

import polars as pl

from gammadb.analysis.clock import tau_expr
from gammadb.analysis.downsample import (
    DEFAULT_PER_DECADE,
    bands_grid,
    bucketed_grids,
    bucketed_series,
    curve_bands,
    select_runs,
)
from gammadb.analysis.shared import shared_reads
from gammadb.errors import InvalidSpecError
from gammadb.metrics import LOSS
from gammadb.records import RunStatus

if TYPE_CHECKING:
    import altair as alt

    from gammadb.analysis.collapse import CollapseReport
    from gammadb.analysis.plateaus import PlateauOptions
    from gammadb.store import Store

WIDTH, HEIGHT = 460, 300
GAMMA_SCHEME = "viridis"
X_CHOICES = ("step", "tau")
MAX_DASHES = 6  # etas told apart by dash pattern; beyond this the tooltip says which
SIG_FIGS = 6  # chart data: enough for any axis, a third of the bytes of repr(float)
BAND_COLUMNS = ("series", "gamma", "eta", "step", "tau", "mean", "lo", "hi", "n_runs")
X_TITLES = {"step": "step t", "tau": "tau = eta t / gamma", "t_fit": "fitted s * t"}


def _data(df: pl.DataFrame) -> pl.DataFrame:
    """The frame Altair gets: NaN / inf become null (Vega-Lite specs are strict JSON).

    Frames go to Altair as frames, not as ``alt.Data(values=...)``: Altair validates inline values
    row by row (seconds for 10^4 rows), frames it converts once. Its 5,000-row guard is lifted only
    where a spec is produced (:mod:`gammadb.analysis.charts_export`); the builders keep their own
    row budget.
    """
    floats = [c for c, t in df.schema.items() if t.is_float()]
    return df.with_columns(pl.when(pl.col(c).is_finite()).then(pl.col(c).round_sig_figs(SIG_FIGS)).otherwise(None)
                           .alias(c) for c in floats)


def use_log_y(df: pl.DataFrame, col: str = "mean", *, min_ratio: float = 20.0,
              min_positive: float = 0.9) -> bool:
    """Log y when (nearly) every value is positive and the positive ones span more than ``min_ratio``.

    A few zeros (a weight change at the first logged step) do not force a linear axis that flattens
    decades of data; at least ``min_positive`` of the values must be positive (the others are dropped).
    """
    v = df[col].drop_nulls()
    v = v.filter(v.is_finite()) if v.dtype.is_float() else v
    if v.is_empty():
        return False
    pos = v.filter(v > 0)
    if pos.is_empty() or pos.len() < min_positive * v.len():
        return False
    return float(pos.max()) / float(pos.min()) >= min_ratio


def gamma_color(field: str = "gamma", *, legend: bool = True, channel: str = "color") -> Any:
    """Colour keyed to gamma (or eta) on a log scale: the grids are log-spaced, so equal steps of the
    grid get equal steps of colour, and the legend is a gradient with the values on it.

    ``channel``: "color", or "fill" / "stroke" where a chart layers areas (fill) under lines (stroke):
    Vega-Lite merges the legends of both into one list of dots, not a gradient, unless each layer
    names its own channel and only one of them has a legend."""
    import altair as alt

    cls = {"color": alt.Color, "fill": alt.Fill, "stroke": alt.Stroke}[channel]
    # keyword arguments, not Altair's chained setters (.scale().title()): each setter call reads its
    # class's signature and docstring and copies the channel, 0.1 s over a report's charts
    return cls(f"{field}:Q", scale=alt.Scale(type="log", scheme=GAMMA_SCHEME), title=field,
               legend=alt.Legend(format=".3~g", gradientLength=160) if legend else None)


def split_diverged(runs: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The runs that did not diverge, and how many did (status 'diverged' or a diverged_at step): a
    diverged run's loss climbs to 1e35 before the NaN and flattens every other curve on a shared axis."""
    div = pl.col("status").eq(RunStatus.DIVERGED.value)
    if "diverged_at" in runs.columns:
        div = div | pl.col("diverged_at").is_not_null()
    mask = runs.select(div.fill_null(False).alias("d"))["d"]
    return runs.filter(~mask), int(mask.sum())


def left_out_note(n_diverged: int, option: str = "--include-diverged") -> Optional[str]:
    if not n_diverged:
        return None
    return f"{n_diverged} diverged run{'s' if n_diverged != 1 else ''} left out ({option} to show)"


def _check_x(x: str) -> None:
    if x not in X_CHOICES:
        raise InvalidSpecError(f"--x must be one of {', '.join(X_CHOICES)} (got {x!r})")


def curves_chart(bands: pl.DataFrame, marks: Optional[pl.DataFrame] = None, *, x: str = "step",
                 metric: str = "loss", y_log: Optional[bool] = None, title: Optional[str] = None,
                 subtitle: Optional[str] = None) -> "alt.Chart":
    """Seed-mean curves on log-log axes, coloured by gamma on a log scale (by eta when gamma is one
    value), eta as the dash pattern when both vary (up to MAX_DASHES etas), with a min/max band.

    ``bands``: :func:`gammadb.analysis.downsample.curve_bands` (series, gamma, eta, step, tau, mean, lo, hi,
    n_runs). ``marks`` (optional): kind ('plateau' | 'drop'), gamma, eta, seed, step, tau, x2 columns
    step_end / tau_end (plateau), value; drawn as a plateau bar and a triangle at each drop.
    """
    import altair as alt

    _check_x(x)
    if bands.is_empty():
        raise InvalidSpecError("nothing to plot: the selected runs have no finite values at step >= 1")
    log_y = use_log_y(bands) if y_log is None else y_log
    data = bands.filter(pl.col("mean").is_not_null())
    if log_y:
        data = data.filter(pl.col("mean") > 0).with_columns(
            pl.when(pl.col("lo") > 0).then(pl.col("lo")).otherwise(pl.col("mean")).alias("lo"))
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    xenc = alt.X(f"{x}:Q", scale=alt.Scale(type="log"), title=X_TITLES[x])
    n_gamma, n_eta = data["gamma"].n_unique(), data["eta"].n_unique()
    by = "eta" if n_gamma == 1 and n_eta > 1 else "gamma"
    dash: dict[str, Any] = {}
    if by == "gamma" and 1 < n_eta <= MAX_DASHES:
        dash = {"strokeDash": alt.StrokeDash("eta:O", title="eta", legend=alt.Legend(format=".3~g"))}
    tooltip = [alt.Tooltip("series:N"), alt.Tooltip("step:Q", format=".3~s"), alt.Tooltip("tau:Q", format=".3~g"),
               alt.Tooltip("mean:Q", format=".4~g"), alt.Tooltip("lo:Q", format=".4~g"),
               alt.Tooltip("hi:Q", format=".4~g"), alt.Tooltip("n_runs:Q", title="seeds")]
    base = alt.Chart(_data(data.select([c for c in BAND_COLUMNS if c in data.columns])))
    # the lines' stroke carries the legend; the bands' fill and the marks carry none (see gamma_color)
    band = base.mark_area(opacity=0.18, interpolate="linear").encode(
        x=xenc, y=alt.Y("lo:Q", scale=yscale, title=metric), y2=alt.Y2("hi:Q"),
        fill=gamma_color(by, legend=False, channel="fill"), detail=alt.Detail("series:N"))
    line = base.mark_line(strokeWidth=1.6).encode(
        x=xenc, y=alt.Y("mean:Q", scale=yscale, title=metric), stroke=gamma_color(by, channel="stroke"),
        detail=alt.Detail("series:N"), tooltip=tooltip, **dash)
    layers: list[Any] = [band, line]
    if marks is not None and not marks.is_empty():
        layers += _mark_layers(marks, x, yscale, by, log_y)
    # the size and title as constructor arguments: each .properties() deep-copies every layer
    titled = {"title": alt.Title(title, subtitle=subtitle) if subtitle else title} if title else {}
    return alt.layer(*layers, width=WIDTH, height=HEIGHT, **titled)


def _mark_layers(marks: pl.DataFrame, x: str, yscale: Any, by: str, log_y: bool) -> list[Any]:
    import altair as alt

    m = marks.filter(pl.col("value").is_not_null())
    if log_y:
        m = m.filter(pl.col("value") > 0)
    plateaus = m.filter(pl.col("kind") == "plateau")
    drops = m.filter(pl.col("kind") == "drop")
    out: list[Any] = []
    tip = [alt.Tooltip("label:N"), alt.Tooltip("seed:Q")]
    if not plateaus.is_empty():
        out.append(alt.Chart(_data(plateaus)).mark_rule(strokeWidth=4, opacity=0.45).encode(
            x=alt.X(f"{x}:Q", scale=alt.Scale(type="log")), x2=alt.X2(f"{x}_end:Q"),
            y=alt.Y("value:Q", scale=yscale), stroke=gamma_color(by, legend=False, channel="stroke"), tooltip=tip))
    if not drops.is_empty():
        out.append(alt.Chart(_data(drops)).mark_point(shape="triangle-down", filled=True, size=70,
                                                      opacity=0.9, stroke="black", strokeWidth=0.5).encode(
            x=alt.X(f"{x}:Q", scale=alt.Scale(type="log")), y=alt.Y("value:Q", scale=yscale),
            fill=gamma_color(by, legend=False, channel="fill"), tooltip=tip))
    return out


def plateau_marks(table: pl.DataFrame, drops: pl.DataFrame) -> pl.DataFrame:
    """Chart marks from :func:`gammadb.analysis.plateaus.detect_plateaus`' tables: a 'plateau' bar from the
    first step to the plateau's end at the initial level, and a 'drop' point at each drop's step
    (at the geometric mean of the loss before and after)."""
    schema = {"kind": pl.String, "run_id": pl.Int64, "gamma": pl.Float64, "eta": pl.Float64, "seed": pl.Int64,
              "step": pl.Float64, "step_end": pl.Float64, "value": pl.Float64, "label": pl.String}
    rows = []
    meta = {r["run_id"]: r for r in table.iter_rows(named=True)}
    for r in meta.values():
        if r["plateau_end_step"] is not None and r["first_step"] is not None and r["initial_loss"] is not None:
            rows.append(dict(kind="plateau", run_id=r["run_id"], gamma=r["gamma"], eta=r["eta"], seed=r["seed"],
                             step=float(r["first_step"]), step_end=float(max(r["plateau_end_step"], r["first_step"])),
                             value=r["initial_loss"],
                             label=f"plateau to step {r['plateau_end_step']} (gamma={r['gamma']:g}, eta={r['eta']:g})"))
    for d in drops.iter_rows(named=True):
        r = meta.get(d["run_id"])
        if r is None:
            continue
        rows.append(dict(kind="drop", run_id=d["run_id"], gamma=r["gamma"], eta=r["eta"], seed=r["seed"],
                         step=float(d["step"]), step_end=None,
                         value=math.sqrt(d["loss_before"] * d["loss_after"]),
                         label=f"drop {d['drop']} at step {d['step']}: {d['loss_before']:.3g} -> {d['loss_after']:.3g}"))
    df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return df.with_columns(tau_expr("step"), tau_expr("step_end").alias("tau_end"))


def collapse_chart(curves: pl.DataFrame, *, metric: str = "loss", log_y: bool = True,
                   reference: Optional[dict[str, Any]] = None, max_rows: int = 15_000) -> "alt.HConcatChart":
    """Raw time, the theory's tau = eta t / gamma, and the fitted time scale, side by side.

    ``curves``: :attr:`gammadb.analysis.collapse.CollapseReport.curves` (run_id, gamma, eta, seed, step, tau,
    t_fit, value); one line per run, coloured by gamma.
    """
    import altair as alt

    if curves.is_empty():
        raise InvalidSpecError("nothing to plot: no run has a curve")
    data = _thin(curves, max_rows).select("run_id", "gamma", "eta", "seed", "step", "tau", "t_fit", "value")
    if log_y:
        data = data.filter(pl.col("value") > 0)
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    color = gamma_color("gamma")
    base = alt.Chart(_data(data)).mark_line(strokeWidth=1.3, opacity=0.85)
    tip = [alt.Tooltip("run_id:Q"), alt.Tooltip("gamma:Q"), alt.Tooltip("eta:Q"), alt.Tooltip("seed:Q"),
           alt.Tooltip("step:Q", format=".3~s"), alt.Tooltip("value:Q", format=".4~g")]
    ref_txt = f" (aligned to run {reference['run_id']}, gamma={reference['gamma']:g})" if reference else ""
    panels = []
    for xcol, ttl in (("step", "raw: step t"), ("tau", "theory: tau = eta t / gamma"),
                      ("t_fit", "fitted: s t" + ref_txt)):
        panels.append(base.encode(
            x=alt.X(f"{xcol}:Q", scale=alt.Scale(type="log"), title=X_TITLES[xcol] if xcol != "t_fit" else "s t"),
            y=alt.Y("value:Q", scale=yscale, title=metric), color=color, detail=alt.Detail("run_id:N"),
            tooltip=tip).properties(width=300, height=260, title=ttl))
    return alt.hconcat(*panels).resolve_scale(x="independent")


def _thin(df: pl.DataFrame, max_rows: int) -> pl.DataFrame:
    """Keep every k-th row per run so at most ``max_rows`` rows remain (bucketed data is log-spaced,
    so this stays log-spaced)."""
    if df.height <= max_rows:
        return df
    k = math.ceil(df.height / max_rows)
    return df.with_columns(pl.int_range(pl.len()).over("run_id").alias("_i")).filter(pl.col("_i") % k == 0).drop("_i")


def metric_chart(bands: pl.DataFrame, *, metric: str, facet: str = "gamma", x: str = "step",
                 y_log: Optional[bool] = None, two_over_eta: bool = False, columns: int = 3,
                 title: Optional[str] = None, subtitle: Optional[str] = None) -> "alt.FacetChart":
    """A per-step metric against step or tau, one panel per gamma (or eta) that has data.

    ``bands``: :func:`gammadb.analysis.downsample.curve_bands` frames of every layer, with a ``layer`` column.
    Colour: the layer when there are several, else the other of gamma / eta (log scale). ``two_over_eta``
    adds one dashed, labelled 2/eta line to each panel that holds a single eta (sharpness at the edge
    of stability); a panel with several etas gets none (one line per eta is unreadable: facet by eta).
    """
    import altair as alt

    _check_x(x)
    if facet not in ("gamma", "eta"):
        raise InvalidSpecError(f"--facet must be gamma or eta (got {facet!r})")
    data = bands.filter(pl.col("mean").is_not_null() & pl.col("mean").is_finite()) if not bands.is_empty() else bands
    if data.is_empty():
        raise InvalidSpecError(f"nothing to plot: no finite values of {metric} at step >= 1")
    other = "eta" if facet == "gamma" else "gamma"
    layered = "layer" in data.columns and data["layer"].n_unique() > 1
    log_y = use_log_y(data) if y_log is None else y_log
    if log_y:
        data = data.filter(pl.col("mean") > 0).with_columns(
            pl.when(pl.col("lo") > 0).then(pl.col("lo")).otherwise(pl.col("mean")).alias("lo"))
    # the reference line: one per panel, carried on the panel's first row (facets share one data set)
    single = pl.col("eta").n_unique().over(facet) == 1
    first = pl.int_range(pl.len()).over(facet) == 0
    data = data.with_columns(
        pl.when(single & first).then(2.0 / pl.col("eta")).otherwise(None).alias("two_over_eta"),
        (pl.col("series") + pl.lit(" layer ") + pl.col("layer").cast(pl.String)).alias("key")
        if "layer" in data.columns else pl.col("series").alias("key"))
    data = data.with_columns(pl.col("two_over_eta").map_elements(lambda v: f"2/eta = {v:.3g}", return_dtype=pl.String,
                                                                 skip_nulls=True).alias("ref_label"))
    data = data.select(*[c for c in BAND_COLUMNS if c in data.columns and c != "series"], "key", "two_over_eta",
                       "ref_label", *(["layer"] if "layer" in data.columns else []))
    yscale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    def color(channel: str, legend: bool) -> Any:  # the lines' stroke carries the legend (see gamma_color)
        if layered:
            return (alt.Fill if channel == "fill" else alt.Stroke)(
                "layer:O", scale=alt.Scale(scheme="plasma"), title="layer", **({} if legend else {"legend": None}))
        if data[other].n_unique() > 1:
            return gamma_color(other, legend=legend, channel=channel)
        return alt.value("#3b528b")  # one curve per panel: a legend would name a constant

    xenc = alt.X(f"{x}:Q", scale=alt.Scale(type="log"), title=X_TITLES[x])
    tip = [alt.Tooltip("key:N", title="curve"), alt.Tooltip("step:Q", format=".3~s"),
           alt.Tooltip("mean:Q", format=".4~g")]
    base = alt.Chart()
    layers: list[Any] = [
        base.mark_area(opacity=0.15).encode(x=xenc, y=alt.Y("lo:Q", scale=yscale, title=metric), y2="hi:Q",
                                            fill=color("fill", False), detail="key:N"),
        base.mark_line(strokeWidth=1.4).encode(x=xenc, y=alt.Y("mean:Q", scale=yscale, title=metric),
                                               stroke=color("stroke", True), detail="key:N", tooltip=tip),
    ]
    if two_over_eta and data["two_over_eta"].drop_nulls().len():
        ref = base.transform_filter(alt.datum.two_over_eta != None)  # noqa: E711 (a Vega expression)
        layers.append(ref.mark_rule(strokeDash=[5, 4], color="firebrick").encode(
            y=alt.Y("two_over_eta:Q", scale=yscale), tooltip=[alt.Tooltip("ref_label:N", title="edge")]))
        layers.append(ref.mark_text(align="left", baseline="bottom", dx=3, dy=-2, color="firebrick",
                                    fontSize=10).encode(
            x=alt.value(0), y=alt.Y("two_over_eta:Q", scale=yscale), text="ref_label:N"))
    chart = alt.layer(*layers, data=_data(data)).properties(width=240, height=180).facet(
        facet=alt.Facet(f"{facet}:O", title=facet, header=alt.Header(format=".4~g", formatType="number")),
        columns=columns).resolve_axis(x="independent").resolve_legend(fill="independent")
    # x: a shared axis is drawn under empty grid slots; fill: the bands' fill has no legend, and a
    # shared one would take the lines' legend with it
    if title:
        chart = chart.properties(title=alt.Title(title, subtitle=subtitle) if subtitle else title)
    return chart


def scaling_chart(scaling: dict[str, Any], *, measure: str = "plateau length (steps)") -> Optional["alt.Chart"]:
    """Plateau length against gamma (log-log), points per group, fitted power law as a line."""
    import altair as alt

    rows, lines = [], []
    for g in scaling.get("groups", []):
        label = ", ".join(f"{k}={v}" for k, v in g["group"].items()) or "all runs"
        for p in g["points"]:
            rows.append({"group": label, "gamma": p["gamma"], "eta": p["eta"], "plateau": p["plateau_steps"],
                         "n_seeds": p["n_seeds"]})
        if g.get("exponent") is not None and g["points"]:
            gs = [p["gamma"] for p in g["points"]]
            for gv in (min(gs), max(gs)):
                lines.append({"group": label, "gamma": gv, "fit": g["prefactor"] * gv ** g["exponent"],
                              "label": f"fit: gamma^{g['exponent']:.2f}"})
    if not rows:
        return None
    pts = alt.Chart(_data(pl.DataFrame(rows))).mark_point(filled=True, size=60).encode(
        x=alt.X("gamma:Q", scale=alt.Scale(type="log"), title="gamma"),
        y=alt.Y("plateau:Q", scale=alt.Scale(type="log"), title=measure), color=alt.Color("group:N", title="group"),
        tooltip=["group:N", "gamma:Q", "eta:Q", alt.Tooltip("plateau:Q", format=".4~g"), "n_seeds:Q"])
    layers = [pts]
    if lines:
        layers.append(alt.Chart(_data(pl.DataFrame(lines))).mark_line(strokeDash=[6, 3]).encode(
            x=alt.X("gamma:Q", scale=alt.Scale(type="log")), y=alt.Y("fit:Q", scale=alt.Scale(type="log")),
            color=alt.Color("group:N"), tooltip=["label:N"]))
    return alt.layer(*layers, width=360, height=260)


# ---------------------------------------------------------------------------------------- figures
def curves_figure(store: "Store", sweep: str, *, metric: str = "loss", where: Sequence[str] = (),
                  run_ids: Optional[Sequence[int]] = None, x: str = "step", marks: bool = True,
                  per_decade: int = DEFAULT_PER_DECADE, max_rows: int = 20_000,
                  opts: Optional["PlateauOptions"] = None,
                  include_diverged: bool = False) -> tuple[Any, dict[str, Any]]:
    """The curves chart of a sweep's selected runs, and a summary (runs, curves, rows, marks,
    left_out: diverged runs not drawn; they are drawn only with ``include_diverged``)."""
    from gammadb.analysis.collapse import parse_metric
    from gammadb.analysis.plateaus import PlateauOptions, detect_plateaus

    _check_x(x)
    key = parse_metric(metric)
    runs = select_runs(store, sweep, where, run_ids)
    if runs.is_empty():
        raise InvalidSpecError(f"no run of sweep {sweep!r} matches {' and '.join(where) or 'the selection'}")
    runs, left_out = _drop_diverged(runs, include_diverged)
    ids = runs["run_id"].to_list()
    o = (opts or PlateauOptions(per_decade=per_decade)) if marks and key.name == LOSS and key.layer == 0 else None
    with shared_reads(store):
        # one read of the series feeds both grids: the bands' (coarsened to the row budget) and the marks'
        bucketed_grids(store, ids, key, [bands_grid(runs, per_decade, max_rows)[0], *([o.per_decade] if o else [])])
        bands = curve_bands(store, runs, key, per_decade=per_decade, max_rows=max_rows)
        mk = None
        if o is not None:
            table, drops = detect_plateaus(bucketed_series(store, ids, key, o.per_decade), runs, o)
            mk = plateau_marks(table, drops)
    label = metric if key.layer == 0 else f"{key.name} (layer {key.layer})"
    n_seeds = int(bands["n_runs"].max()) if not bands.is_empty() else 0
    chart = curves_chart(bands, mk, x=x, metric=label,
                         title=f"{label} against {X_TITLES[x]}, sweep {sweep}",
                         subtitle=_subtitle(n_seeds, left_out))
    info = {"runs": runs.height, "curves": bands["series"].n_unique() if not bands.is_empty() else 0,
            "rows": bands.height, "marks": 0 if mk is None else mk.height, "left_out": left_out}
    return chart, info


def _drop_diverged(runs: pl.DataFrame, include: bool) -> tuple[pl.DataFrame, int]:
    if include:
        return runs, 0
    kept, n = split_diverged(runs)
    if kept.is_empty():
        raise InvalidSpecError(f"every selected run diverged ({n} runs): pass --include-diverged to plot them")
    return kept, n


def _subtitle(n_seeds: int, left_out: int) -> str:
    parts = ["line: mean over seeds, band: min..max" if n_seeds > 1 else "one seed per curve"]
    note = left_out_note(left_out)
    return "; ".join(parts + ([note] if note else []))


def metric_layers(store: "Store", name: str) -> list[int]:
    """The layers stored for metric ``name`` (0 = the whole model)."""
    return store.metric_layers(name)


def metric_figure(store: "Store", sweep: str, *, metric: str, facet: str = "gamma", x: str = "step",
                  where: Sequence[str] = (), run_ids: Optional[Sequence[int]] = None,
                  two_over_eta: Optional[bool] = None, per_decade: int = DEFAULT_PER_DECADE,
                  max_rows: int = 20_000, include_diverged: bool = False) -> tuple[Any, dict[str, Any]]:
    """A metric faceted by gamma or eta: every layer of ``metric`` (``NAME``) or one (``NAME.lK``)."""
    from gammadb.analysis.collapse import parse_metric
    from gammadb.metrics import SHARPNESS, MetricKey

    key = parse_metric(metric)
    explicit_layer = key.layer != 0 or ".l" in metric or ":" in metric
    layers = [key.layer] if explicit_layer else (metric_layers(store, key.name) or [0])
    runs = select_runs(store, sweep, where, run_ids)
    if runs.is_empty():
        raise InvalidSpecError(f"no run of sweep {sweep!r} matches {' and '.join(where) or 'the selection'}")
    runs, left_out = _drop_diverged(runs, include_diverged)
    frames = []
    for layer in layers:
        b = curve_bands(store, runs, MetricKey(key.name, layer), per_decade=per_decade,
                        max_rows=max(1000, max_rows // len(layers)))
        if not b.is_empty():
            frames.append(b.with_columns(pl.lit(layer, dtype=pl.Int64).alias("layer")))
    if not frames:
        from gammadb.analysis.collapse import missing_metric_message

        raise InvalidSpecError(missing_metric_message(store, key, sweep))
    bands = pl.concat(frames, how="diagonal_relaxed")
    edge = (key.name == SHARPNESS) if two_over_eta is None else two_over_eta
    label = key.name if len(layers) > 1 else metric
    n_seeds = int(bands["n_runs"].max())
    chart = metric_chart(bands, metric=label, facet=facet, x=x, two_over_eta=edge,
                         title=f"{label} against {X_TITLES[x]}, one panel per {facet}, sweep {sweep}",
                         subtitle=_subtitle(n_seeds, left_out))
    shown = bands.filter(pl.col("mean").is_not_null() & pl.col("mean").is_finite())
    return chart, {"runs": runs.height, "layers": layers, "rows": bands.height,
                   "panels": shown[facet].n_unique(), "left_out": left_out}


def collapse_figure(report: "CollapseReport") -> Any:
    """The collapse chart of a :class:`gammadb.analysis.collapse.CollapseReport`."""
    label = report.metric.name if report.metric.layer == 0 else f"{report.metric.name} (layer {report.metric.layer})"
    return collapse_chart(report.curves, metric=label, log_y=report.transform == "log10", reference=report.reference)
