"""Chart builders read by people: log scales, a legend for gamma, no legend for constant fields,
diverged runs left out, one labelled reference line per panel, slopes on the eta* chart, and the
learning-rate U-curve's values. Each chart is also rendered to PNG."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from gammadb.analysis import optimal_lr
from gammadb.analysis.charts_curves import curves_figure, metric_chart, metric_figure, use_log_y
from gammadb.analysis.charts_export import chart_spec, save_chart
from gammadb.analysis.charts_lr import eta_vs_gamma, fit_lines, lr_curve_figure, lr_curve_table
from gammadb.analysis.fits import BrokenPowerLaw, aic, broken_beats_lines
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_curves import family_frame


def _sweep() -> pl.DataFrame:
    """3 gammas x 3 etas x 2 seeds of the universal curve, and one diverged run whose loss reaches 1e35."""
    df = family_frame([1.0, 10.0, 100.0], [0.01, 0.1, 1.0], T=400, seeds=(0, 1), metrics=True)
    t = np.arange(0, 60)
    div = pl.DataFrame({"gamma": 10.0, "eta": 30.0, "seed": 0, "step": t, "depth": 3, "model": "toy",
                        "loss": np.where(t >= 50, np.nan, np.minimum(np.exp(t * 2.0), 1e35))})
    return pl.concat([df, div], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    u = f"sqlite:///{tmp_path_factory.mktemp('charts') / 'store.sqlite'}"
    with Store.open(u) as s:
        import_frame(s, _sweep(), "demo")
    with Store.open(u) as s:
        yield s


def _layers(spec: dict) -> list[dict]:
    out, todo = [], [spec]
    while todo:
        x = todo.pop()
        for k in ("layer", "hconcat", "vconcat"):
            todo += x.get(k, [])
        if "spec" in x:
            todo.append(x["spec"])
        if "mark" in x:
            out.append(x)
    return out


def _rows(spec: dict) -> list[dict]:
    return [r for rows in spec["datasets"].values() for r in rows]


def test_curves_leave_diverged_runs_out_and_key_colour_to_log_gamma(store, tmp_path):
    chart, info = curves_figure(store, "demo", marks=False)
    spec = chart_spec(chart)
    assert info["left_out"] == 1 and "1 diverged run left out (--include-diverged" in spec["title"]["subtitle"]
    assert max(r["mean"] for r in _rows(spec) if r.get("mean") is not None) < 10  # not 1e35
    line = next(la for la in _layers(spec) if la["mark"]["type"] == "line")["encoding"]
    assert line["stroke"]["field"] == "gamma" and line["stroke"]["scale"]["type"] == "log"
    assert line["stroke"].get("legend") is not None and line["y"]["scale"]["type"] == "log"
    assert line["strokeDash"]["field"] == "eta"  # the three etas told apart, with a legend
    chart, info = curves_figure(store, "demo", marks=False, include_diverged=True)
    assert info["left_out"] == 0 and max(r["mean"] or 0 for r in _rows(chart_spec(chart))) > 1e30
    save_chart(chart, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


def test_curves_and_their_plateau_marks_come_from_one_read(store, monkeypatch):
    """The bands (coarsened to the row budget: 4 buckets a decade here, merged from the 40 grid) and
    the marks (40 a decade) come from one read of the loss, and draw what the separate reads drew;
    with the loss cached where the runs were summarised (here the import), from no read at all."""
    from sqlalchemy import text

    from gammadb.analysis.charts_curves import curves_chart, plateau_marks, split_diverged
    from gammadb.analysis.downsample import bands_grid, bands_per_decade, bucketed_series, curve_bands
    from gammadb.analysis.plateaus import PlateauOptions, detect_plateaus
    from gammadb.metrics import MetricKey

    runs, _ = split_diverged(store.runs_frame("demo"))
    table, drops = detect_plateaus(bucketed_series(store, runs["run_id"].to_list(), "loss", 40), runs,
                                   PlateauOptions())
    want = curves_chart(curve_bands(store, runs, MetricKey("loss"), max_rows=100), plateau_marks(table, drops))
    assert bands_per_decade(runs, 40, 100) == 4 and bands_grid(runs, 40, 100) == (40, 10)
    reads = []
    real = store.values_frame
    monkeypatch.setattr(store, "values_frame", lambda ids, *a, **k: reads.append(list(ids)) or real(ids, *a, **k))
    chart, info = curves_figure(store, "demo", max_rows=100)
    assert reads == [] and info["marks"] > 0
    assert chart_spec(chart)["datasets"] == chart_spec(want)["datasets"]
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM series_buckets"))
    monkeypatch.setattr(store, "cache_buckets", lambda *a, **k: False)  # the store's cache stays empty: reads count
    chart, info = curves_figure(store, "demo", max_rows=100)
    assert len(reads) == 1 and info["marks"] > 0
    assert chart_spec(chart)["datasets"] == chart_spec(want)["datasets"]


def test_log_y_despite_a_few_zeros():
    df = pl.DataFrame({"mean": [0.0] + list(np.logspace(-3, 3, 30))})
    assert use_log_y(df) and not use_log_y(pl.DataFrame({"mean": [0.0, 0.0, 1.0, 100.0]}))


def test_metric_panels_have_one_labelled_reference_line(store, tmp_path):
    chart, info = metric_figure(store, "demo", metric="loss", facet="eta", two_over_eta=True)
    spec = chart_spec(chart)
    refs = [r for r in _rows(spec) if r.get("two_over_eta") is not None]
    assert sorted(r["eta"] for r in refs) == [0.01, 0.1, 1.0]  # one per panel; the diverged eta=30 is gone
    assert {r["ref_label"] for r in refs} == {"2/eta = 200", "2/eta = 20", "2/eta = 2"}
    assert any(la["mark"]["type"] == "text" for la in _layers(spec))
    assert spec["resolve"]["axis"]["x"] == "independent"  # no bare axes under empty grid slots
    # faceted by gamma a panel holds three etas: no reference line at all rather than three
    chart, _ = metric_figure(store, "demo", metric="loss", facet="gamma", two_over_eta=True)
    assert not [r for r in _rows(chart_spec(chart)) if r.get("two_over_eta") is not None]
    save_chart(chart, tmp_path / "m.png")


def test_metric_chart_has_no_legend_for_one_curve_per_panel():
    bands = pl.DataFrame({"series": ["a"] * 3, "gamma": [10.0] * 3, "eta": [0.1] * 3, "step": [1.0, 10.0, 100.0],
                          "tau": [0.01, 0.1, 1.0], "mean": [0.1, 1.0, 19.0], "lo": [0.1, 1.0, 18.0],
                          "hi": [0.1, 1.0, 20.0], "n_runs": [1] * 3, "layer": [0] * 3})
    spec = chart_spec(metric_chart(bands, metric="sharpness", two_over_eta=True))
    line = spec["spec"]["layer"][1]["encoding"]
    assert "field" not in line["stroke"]  # eta is constant: a fixed colour, no legend
    assert [r["two_over_eta"] for r in _rows(spec) if r["two_over_eta"] is not None] == [20.0]


@pytest.fixture(scope="module")
def lr(store):
    return optimal_lr.analyze(store, "demo", settings=optimal_lr.Settings(n_boot=50, small_max=0.5, large_min=1.0))


def test_eta_chart_writes_slopes_and_keeps_regimes_and_targets_apart(lr, tmp_path):
    fits = pl.DataFrame({"target": ["eta_star", "eta_star", "eta_max"], "regime": ["small_gamma", "large_gamma", "large_gamma"],
                         "gamma_lo": [0.01, 10.0, 10.0], "gamma_hi": [0.1, 100.0, 100.0],
                         "exponent": [2.03, 0.7, 0.6], "exponent_lo": [1.99, 0.6, 0.5], "exponent_hi": [2.17, 0.8, 0.7],
                         "prefactor": [1.0, 1.0, 2.0], "theory_exponent": [2.0, 2 / 3, 2 / 3]})
    lines = pl.concat([fit_lines(fits, "eta_star"), fit_lines(fits, "eta_max")])
    assert lines.group_by("line").len()["len"].to_list() == [2] * 6  # six separate two-point lines
    labels = set(lines["label"].to_list())
    assert {"eta* fit 2.03 [1.99, 2.17]", "theory 2", "theory 0.667"} <= labels
    spec = chart_spec(eta_vs_gamma(lr))
    layers = _layers(spec)
    shapes = [la["encoding"]["shape"] for la in layers if "shape" in la.get("encoding", {})]
    # estimates and grid-edge bounds told apart in words, never a legend entry "false"
    assert all(sh["field"] == "point" and sh["scale"]["domain"] == ["estimate", "bound (grid edge)"] for sh in shapes)
    import altair as alt

    from gammadb.analysis.charts_lr import _bound_shape

    assert _bound_shape(alt, pl.DataFrame({"c": [False, False]}), "c") == {}  # constant: no legend
    from gammadb.analysis.charts_lr import _line_layers, slope_lines

    layers = _layers(chart_spec(alt.layer(*_line_layers(alt, lines))))
    dash = [la["encoding"]["strokeDash"] for la in layers if "strokeDash" in la.get("encoding", {})]
    assert dash and dash[0]["scale"]["domain"] == ["fit", "theory"] and dash[0]["title"] == "line"
    # the theory slopes in the dashed line's legend entry, the fitted ones in the subtitle, one line
    # per target with its regimes: nothing written over the lines, where labels crowded each other
    assert "theory: slope 2, 0.667" in dash[0]["legend"]["labelExpr"]
    assert not any(la["mark"]["type"] == "text" for la in layers)
    assert slope_lines(lines) == ["eta* slope 2.03 [1.99, 2.17] at small gamma, 0.7 [0.6, 0.8] at large gamma",
                                  "eta_max slope 0.6 [0.5, 0.7] at large gamma"]
    with_fits = dataclasses.replace(lr, fits=fits.with_columns(pl.lit(0).alias("group_idx")))
    subtitle = chart_spec(eta_vs_gamma(with_fits))["title"]["subtitle"]
    assert subtitle[-2:] == slope_lines(lines)
    save_chart(eta_vs_gamma(lr), tmp_path / "e.png")


def test_lr_curve_values_are_the_loss_at_the_budget(store, lr, tmp_path):
    chart, info = lr_curve_figure(store, "demo")
    assert info["curves"] == 3 and info["etas"] == 4 and info["diverged_cells"] == 1
    spec = chart_spec(chart)
    line = next(la for la in _layers(spec) if la["mark"]["type"] == "line")
    assert line["encoding"]["x"]["scale"]["type"] == "log" and line["encoding"]["y"]["scale"]["type"] == "log"
    assert line["encoding"]["stroke"]["field"] == "gamma" and line["encoding"]["stroke"]["scale"]["type"] == "log"
    # the line's value at (gamma, eta) is the seed mean of each run's tail-mean loss at the budget
    from gammadb.analysis._common import load_runs

    runs = load_runs(store, "demo").frame.filter(~pl.col("diverged"))
    want = runs.group_by("gamma", "eta").agg(pl.col("tail_mean_loss").mean(), pl.col("tail_mean_loss").min().alias("lo"))
    t = lr_curve_table(lr, optimal_lr.with_value(load_runs(store, "demo").frame, lr.settings.criterion))
    got = t.join(want, on=["gamma", "eta"])
    assert got.height == 9
    np.testing.assert_allclose(got["loss"], got["tail_mean_loss"], rtol=1e-9)
    np.testing.assert_allclose(got["lo"], got["lo_right"], rtol=1e-9)  # band: min over the seeds
    div = t.filter(pl.col("diverged"))
    assert div.height == 1 and div["eta"][0] == pytest.approx(30.0) and div["loss"].is_null().all()
    crosses = [r for r in _rows(spec) if r.get("mark") == "diverged"]
    assert [(r["gamma"], pytest.approx(r["eta"])) for r in crosses] == [(10.0, 30.0)]
    save_chart(chart, tmp_path / "u.png")
    assert (tmp_path / "u.png").stat().st_size > 10_000


def test_broken_law_shown_only_when_aic_says_it_fits_better():
    g = np.logspace(-2, 2, 9)
    y = g**2 / (1 + g) ** (2 - 2 / 3)  # a real bend at gamma = 1
    bend = BrokenPowerLaw(2.0, 2 / 3, 1.0, 1.0, 9)
    better, why = broken_beats_lines(g, y, bend, [(1.0, 1.3, 0.01, 100.0)])
    assert better and "AIC" in why
    better, why = broken_beats_lines(g, g**1.5, BrokenPowerLaw(1.0, 2.0, 1.0, 1.0, 9), [(1.0, 1.5, 0.01, 100.0)])
    assert not better and why.startswith("not shown: it fits no better than one straight line")
    assert aic(np.array([0.1, -0.1]), 2) == pytest.approx(2 * np.log(0.01) + 4)


def _legends(chart) -> tuple[int, int, int]:
    """(gradient legends, symbol entries, legend titles) of the chart as vl-convert draws it."""
    svg = vl_convert.vegalite_to_svg(chart_spec(chart))
    return svg.count("<linearGradient"), svg.count("role-legend-symbol"), svg.count("role-legend-title")


vl_convert = pytest.importorskip("vl_convert")


def test_gamma_legends_are_one_gradient_as_drawn(store):
    """Bands (fill) under lines (stroke), plus plateau marks and eta* points: Vega-Lite merged their
    legends into a list of dots cut off after 30 entries (curves), or into no legend at all (the
    U-curve, the faceted metric chart); each now draws one gamma gradient, and a faceted chart one
    legend, not one a panel."""
    chart, _ = curves_figure(store, "demo")
    gradients, symbols, titles = _legends(chart)
    assert gradients >= 1 and (symbols, titles) == (3, 2)  # gamma, a gradient; eta, its 3 dash patterns
    chart, _ = lr_curve_figure(store, "demo")
    gradients, _, titles = _legends(chart)
    assert gradients >= 1 and titles == 2  # gamma and the eta* / diverged markers
    chart, _ = metric_figure(store, "demo", metric="loss", facet="eta")
    gradients, symbols, titles = _legends(chart)
    assert gradients >= 1 and symbols == 0 and titles == 1
