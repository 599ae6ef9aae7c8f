"""The fast spec (gammadb.analysis.charts_export.chart_json): polars frames written by polars and spliced
in as named datasets. It must be Altair's own spec up to dataset names, valid Vega-Lite, strict JSON,
safe inside <script>, and it must leave the caller's chart (and Altair's global state) alone."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import types
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import altair as alt
import polars as pl
import pytest
from altair.utils.schemapi import validate_jsonschema
from altair.vegalite.v6.schema.core import load_schema

from gammadb.analysis import optimal_lr
from gammadb.analysis import phase as ph
from gammadb.analysis.charts_curves import collapse_figure, curves_figure, metric_figure
from gammadb.analysis.charts_export import chart_html, chart_json, chart_spec, save_chart
from gammadb.analysis.charts_lr import lr_curve_figure, optimal_lr_chart, phase_chart
from gammadb.analysis.collapse import analyze_collapse
from gammadb.analysis.report_html import Page, render
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_curves import family_frame


def altair_spec(chart: Any) -> dict[str, Any]:
    """The spec by Altair's own path: what chart_spec returned before."""
    with alt.data_transformers.disable_max_rows():
        return chart.to_dict(validate=False)


def inline(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with each named dataset put back where it is used: specs equal up to dataset names
    (and up to how datasets are shared) have equal ``inline``."""
    spec = dict(spec)
    datasets = spec.pop("datasets", {})

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: ({"values": datasets[v["name"]], **{kk: vv for kk, vv in v.items() if kk != "name"}}
                        if k == "data" and isinstance(v, dict) and v.get("name") in datasets else walk(v))
                    for k, v in x.items()}
        return [walk(v) for v in x] if isinstance(x, list) else x

    return walk(spec)


def data_names(spec: Any) -> set[str]:
    """Every dataset name a spec refers to."""
    if isinstance(spec, dict):
        own = {spec["data"]["name"]} if isinstance(spec.get("data"), dict) and "name" in spec["data"] else set()
        return own.union(*(data_names(v) for k, v in spec.items() if k != "datasets"))
    return set().union(*(data_names(v) for v in spec)) if isinstance(spec, list) else set()


def strict(text: str) -> Any:
    def refuse(const: str) -> None:
        raise ValueError(f"not strict JSON: {const}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    u = f"sqlite:///{tmp_path_factory.mktemp('fastjson') / 'store.sqlite'}"
    with Store.open(u) as s:
        import_frame(s, family_frame([1.0, 10.0, 100.0], [0.01, 0.1, 1.0], T=400, seeds=(0, 1), metrics=True), "demo")
    with Store.open(u) as s:
        yield s


# every kind of chart the commands and the report draw: layers over several frames, a facet whose
# layers share the facet's frame, hconcat panels sharing one frame, vconcat of hconcat, a U-curve
BUILDERS: dict[str, Callable[[Store], Any]] = {
    "curves-with-marks": lambda s: curves_figure(s, "demo")[0],
    "curves-against-tau": lambda s: curves_figure(s, "demo", x="tau", marks=False)[0],
    "metric-facet-with-reference": lambda s: metric_figure(s, "demo", metric="loss", facet="eta",
                                                           two_over_eta=True)[0],
    "metric-facet-layers": lambda s: metric_figure(s, "demo", metric="weight_change")[0],
    "collapse-hconcat": lambda s: collapse_figure(analyze_collapse(s, "demo", gamma_min=None)),
    "optimal-lr-vconcat": lambda s: optimal_lr_chart(optimal_lr.analyze(
        s, "demo", settings=optimal_lr.Settings(n_boot=20, small_max=0.5, large_min=1.0))),
    "lr-curve": lambda s: lr_curve_figure(s, "demo")[0],
    "phase": lambda s: phase_chart(ph.analyze(s, "demo")),
}


@pytest.mark.parametrize("kind", list(BUILDERS), ids=list(BUILDERS))
def test_the_fast_spec_is_altairs_up_to_dataset_names(store, kind):
    chart = BUILDERS[kind](store)
    text = chart_json(chart)
    new, old = strict(text), altair_spec(chart)
    assert inline(new) == inline(old)
    assert new["datasets"] and data_names(new) == set(new["datasets"])  # every reference resolves, none unused
    assert len(new["datasets"]) == len(old["datasets"])  # shared frames stay shared
    validate_jsonschema(new, load_schema())  # raises on a spec Vega-Lite would refuse
    assert chart_spec(chart) == new


def test_several_frames_become_several_datasets_and_equal_frames_one(store):
    chart = BUILDERS["curves-with-marks"](store)  # bands shared by two layers, plateau bars, drop points
    assert len(chart_spec(chart)["datasets"]) == 3
    df = pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    twins = alt.layer(alt.Chart(df).mark_line().encode(x="x:Q", y="y:Q"),
                      alt.Chart(df.clone()).mark_point().encode(x="x:Q", y="y:Q"),
                      alt.Chart(df.with_columns(pl.col("y") * 2)).mark_point().encode(x="x:Q", y="y:Q"))
    spec = chart_spec(twins)
    assert len(spec["datasets"]) == 2 and spec["layer"][0]["data"] == spec["layer"][1]["data"]
    assert sorted(r["y"] for rows in spec["datasets"].values() for r in rows) == [3.0, 4.0, 6.0, 8.0]


def test_values_and_urls_go_altairs_way_beside_frames():
    frame = pl.DataFrame({"x": [1, 2, 3], "y": [0.5, 0.25, 0.125]})
    chart = alt.layer(
        alt.Chart(alt.Data(values=[{"x": 1, "y": 2.0}, {"x": 2, "y": None}])).mark_point().encode(x="x:Q", y="y:Q"),
        alt.Chart(frame).mark_line().encode(x="x:Q", y="y:Q"),
        alt.Chart("https://example.org/data.csv").mark_rule().encode(x="x:Q"),
        alt.Chart({"values": [{"x": 7}]}).mark_tick().encode(x="x:Q"),
    )
    new, old = strict(chart_json(chart)), altair_spec(chart)
    assert inline(new) == inline(old)
    assert new["layer"][0]["data"] == {"values": [{"x": 1, "y": 2.0}, {"x": 2, "y": None}]}  # Altair keeps it there
    assert new["layer"][2]["data"] == {"url": "https://example.org/data.csv"}
    assert len(new["datasets"]) == 2 and data_names(new) == set(new["datasets"])  # the frame's and the dict's
    validate_jsonschema(new, load_schema())


def test_values_of_every_column_type_are_altairs():
    frame = pl.DataFrame({
        "f64": [0.1, 1e-05, 1.23456e20], "f32": pl.Series([0.1, 2.5, -3.0], dtype=pl.Float32),
        "i64": [1, -2, 2**62], "u8": pl.Series([0, 7, 255], dtype=pl.UInt8), "flag": [True, False, None],
        "s": ["</script><script>alert(1)</script>", "é \u2028 \"q\" \\", None],
        "cat": pl.Series(["a", "b", "a"], dtype=pl.Categorical), "nothing": [None, None, None],
        "day": [dt.date(2024, 1, 31), None, dt.date(1999, 12, 1)],
        "at": [dt.datetime(2024, 1, 31, 12, 30, 1, 500), None, dt.datetime(1970, 1, 1)],
        "at_utc": pl.Series([dt.datetime(2024, 3, 10, 2, 30)] * 3).dt.replace_time_zone("UTC"),
    })
    chart = alt.Chart(frame).mark_point().encode(x="f64:Q", y="f32:Q")
    new, old = strict(chart_json(chart)), altair_spec(chart)
    assert inline(new) == inline(old)
    (rows,) = new["datasets"].values()
    assert rows[0]["f32"] == float(pl.Series([0.1], dtype=pl.Float32)[0]) != 0.1  # widened, as Altair does
    assert rows[0]["day"] == "2024-01-31T00:00:00" and rows[0]["at_utc"].endswith("+0000")


@pytest.mark.parametrize("column", [pl.Series("v", [[1, 2], [3]]), pl.Series("v", [{"a": 1}, {"a": None}]),
                                    pl.Series("v", [Decimal("1.50"), Decimal("2.25")]),
                                    pl.Series("v", [dt.time(1, 2), dt.time(3, 4)])],
                         ids=["list", "struct", "decimal", "time"])
def test_a_column_polars_would_write_otherwise_goes_altairs_way(column):
    """Altair's rows: JSON for nested values; for decimals and times not JSON at all, before as now."""
    chart = alt.Chart(pl.DataFrame({"x": [1, 2]}).with_columns(column)).mark_point().encode(x="x:Q")
    try:
        old: Any = json.loads(json.dumps(altair_spec(chart)))
    except TypeError as exc:
        old = exc
    if isinstance(old, TypeError):
        with pytest.raises(TypeError, match="is not JSON serializable"):
            chart_json(chart)
    else:
        assert inline(chart_spec(chart)) == inline(old)
    assert column.dtype.is_nested() == (not isinstance(old, TypeError))


def test_altairs_way_has_no_row_limit_here_either():
    """The builders keep their own row budget: Altair's 5,000-row guard is lifted on both paths."""
    chart = alt.Chart(pl.DataFrame({"x": range(6000), "v": [[i] for i in range(6000)]})).mark_point().encode(x="x:Q")
    (rows,) = chart_spec(chart)["datasets"].values()
    assert len(rows) == 6000 and rows[-1] == {"x": 5999, "v": [5999]}


def test_nan_and_inf_are_null_strict_json():
    chart = alt.Chart(pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [float("nan"), float("inf"), -float("inf"), 5.0]})
                      ).mark_point().encode(x="x:Q", y="y:Q")
    (rows,) = strict(chart_json(chart))["datasets"].values()
    assert [r["y"] for r in rows] == [None, None, None, 5.0]


def test_the_callers_chart_and_altairs_state_are_left_alone(store):
    chart = BUILDERS["curves-with-marks"](store)
    frames = [layer.data for layer in chart.layer]
    before = altair_spec(chart)
    active = alt.data_transformers.active
    chart_json(chart)
    assert [layer.data for layer in chart.layer] == frames and all(
        a is b for a, b in zip((layer.data for layer in chart.layer), frames))
    assert all(isinstance(f, pl.DataFrame) for f in frames)
    assert altair_spec(chart) == before and alt.data_transformers.active == active
    bad = alt.Chart(pl.DataFrame({"d": [dt.timedelta(1)]})).mark_point()  # Altair refuses durations
    with pytest.raises(ValueError, match="Duration"):
        chart_json(bad)
    assert alt.data_transformers.active == active


def test_outside_chart_json_the_transformer_is_altairs_default():
    """Another thread's to_dict() may run while chart_json holds Altair's (global) transformer."""
    chart = alt.Chart(pl.DataFrame({"x": [1, 2], "y": [3.0, 4.0]})).mark_line().encode(x="x:Q", y="y:Q")
    want = chart.to_dict()
    chart_json(chart)  # registers it
    with alt.data_transformers.enable("gammadb-named"):
        assert chart.to_dict() == want


def test_concurrent_exports_each_get_their_own_data():
    charts = [alt.Chart(pl.DataFrame({"x": list(range(200)), "y": [float(i * k) for i in range(200)]}))
              .mark_line().encode(x="x:Q", y="y:Q") for k in range(8)]
    want = [inline(altair_spec(c)) for c in charts]
    got: dict[int, Any] = {}

    def export(i: int) -> None:
        for _ in range(5):
            got[i] = inline(json.loads(chart_json(charts[i])))

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(charts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(charts))] == want


def _script_bodies(page: str) -> list[str]:
    return re.findall(r"<script type='text/javascript'>(.*?)</script>", page, re.S)


def evil_chart() -> Any:
    df = pl.DataFrame({"x": [1.0, 2.0], "label": ["</script><script>alert(1)</script>", "<!-- </SCRIPT"]})
    return alt.Chart(df).mark_text().encode(x="x:Q", text="label:N").properties(title="a </script> title")


def test_the_page_of_one_chart_escapes_the_end_of_its_script():
    page = chart_html(evil_chart())
    assert page.count("</script>") == 2  # the bundle's and the chart's own, nothing from the data
    (call,) = [b for b in _script_bodies(page) if b.startswith("vegaEmbed(")]
    spec = json.loads(call[len("vegaEmbed('#vis', "):call.index(", {renderer")])
    assert inline(spec) == inline(altair_spec(evil_chart()))  # <\/ reads as </ again


def test_the_report_page_embeds_the_fast_specs_escaped():
    page = Page(static=False)
    sec = page.section("s", "S")
    page.chart(sec, evil_chart(), "caption")
    page.chart(sec, evil_chart().mark_point(), "")
    text = render(page, types.SimpleNamespace(display_url="sqlite:///x"), "demo", pl.DataFrame({"run_id": [1]}))
    assert text.count("</script>") == 2 and "alert(1)" in text
    specs = json.loads(re.search(r"const SPECS = (\{.*?\});\n", text, re.S).group(1))
    assert list(specs) == ["chart-0", "chart-1"]
    assert inline(specs["chart-0"]) == inline(altair_spec(evil_chart()))
    assert specs["chart-1"]["mark"]["type"] == "point"


def test_exports_are_drawn_from_the_fast_spec(tmp_path: Path):
    df = pl.DataFrame({"step": [1, 10, 100], "loss": [1.0, 0.5, 0.1]})
    chart = alt.Chart(df).mark_line().encode(x=alt.X("step:Q").scale(type="log"), y="loss:Q")
    assert json.loads(save_chart(chart, tmp_path / "c.json").read_text()) == chart_spec(chart)
    with alt.data_transformers.disable_max_rows():  # the PNG Altair's own save draws, byte for byte
        chart.save(str(tmp_path / "altair.png"), format="png", scale_factor=2)
    assert save_chart(chart, tmp_path / "c.png").read_bytes() == (tmp_path / "altair.png").read_bytes()
    assert save_chart(chart, tmp_path / "c.svg").read_text().startswith("<svg")
    assert save_chart(chart, tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
