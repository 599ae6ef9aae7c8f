"""`gammadb analyze plateaus|collapse` and `gammadb plot curves|collapse|metric` through CliRunner,
and the chart builders as Vega-Lite specs."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from gammadb.analysis.charts_curves import curves_chart, metric_chart
from gammadb.analysis.charts_export import chart_spec
from gammadb.cli import analyze_curves, plot
from gammadb.cli.common import new_app
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_curves import family_frame

runner = CliRunner()


def cli_app() -> typer.Typer:
    """The commands as the root app registers them (built here so the tests do not depend on it)."""
    app = new_app("test")
    app.command("plateaus")(analyze_curves.plateaus)
    app.command("collapse")(analyze_curves.collapse)
    app.add_typer(plot.app, name="plot")
    return app


APP = cli_app()


def sweep_frame() -> pl.DataFrame:
    df = family_frame([10.0, 100.0, 1000.0], [0.03, 0.1], T=20_000, seeds=(0, 1), metrics=True)
    logged = np.unique(np.round(np.logspace(0, np.log10(20_000), 60))).astype(np.int64)  # a log cadence
    sharp = (2 / pl.col("eta")) * (1 - (-pl.col("eta") * pl.col("step") / pl.col("gamma")).exp())
    df = df.with_columns(pl.when(pl.col("step").is_in(logged)).then(c).otherwise(None).alias(n) for n, c in [
        ("sharpness", sharp), *((n, pl.col(n)) for n in ("weight_change.l1", "weight_change.l2", "feature_alignment"))])
    t = np.arange(0, 400)
    div = pl.DataFrame({"gamma": 10.0, "eta": 3.0, "seed": 0, "step": t, "depth": 3, "model": "toy",
                        "loss": np.where(t >= 300, np.inf, np.exp(t / 60))})
    return pl.concat([df, div], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    u = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'store.sqlite'}"
    with Store.open(u) as s:
        import_frame(s, sweep_frame(), "demo")
    return u


def run(*args: str):
    return runner.invoke(APP, list(args), catch_exceptions=False)


def test_plateaus_json(url):
    res = run("plateaus", "--sweep", "demo", "--url", url, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) >= {"sweep", "runs", "scaling"} and doc["sweep"] == "demo"
    r = doc["runs"][0]
    assert set(r) >= {"run_id", "gamma", "eta", "seed", "plateau_end_step", "escape_step", "n_drops", "drops"}
    assert set(r["drops"][0]) >= {"step", "loss_before", "loss_after", "plateau_steps"}
    diverged = next(x for x in doc["runs"] if x["eta"] == 3.0)
    assert diverged["status"] == "diverged" and diverged["diverged_at"] == 300
    grp = doc["scaling"]["groups"][0]
    assert grp["exponent"] == pytest.approx(1.0, abs=0.05) and grp["theory_exponent"] == pytest.approx(1 / 3)


def test_plateaus_table_and_options(url):
    res = run("plateaus", "--sweep", "demo", "--url", url, "--along", "fixed", "--eta", "0.1", "--min-drop", "0.3")
    assert res.exit_code == 0, res.output
    assert "plateaus of sweep demo" in res.stdout and "diverged at step 300" in res.stdout
    m = re.search(r"along fixed: exponent ([0-9.]+) \[", res.stdout)
    assert m and float(m[1]) == pytest.approx(1.0, abs=0.05)
    bad = runner.invoke(APP, ["plateaus", "--sweep", "demo", "--url", url, "--edge-slope", "5"])
    assert bad.exit_code == 2 and "edge_slope" in bad.output


def test_collapse_json(url):
    res = run("collapse", "--sweep", "demo", "--url", url, "--json", "--eta", "0.1")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) >= {"sweep", "metric", "reference", "theory", "rms_before", "rms_after_theory",
                        "rms_after_fit", "runs", "fit"}
    assert set(doc["reference"]) >= {"run_id", "gamma", "eta"} and doc["theory"] == {
        "tau": "eta*t/gamma", "exponent_gamma": -1.0, "exponent_eta": 1.0}
    assert set(doc["fit"]) >= {"exponent_gamma", "exponent_gamma_ci", "exponent_eta"}
    assert doc["fit"]["exponent_gamma"] == pytest.approx(-1.0, abs=0.05)
    assert doc["rms_after_theory"] < 0.1 * doc["rms_before"]
    assert {"run_id", "gamma", "eta", "time_scale"} <= set(doc["runs"][0])


def test_collapse_table_metric_and_family(url):
    res = run("collapse", "--sweep", "demo", "--url", url, "--metric", "weight_change.l2", "--family", "all")
    assert res.exit_code == 0, res.output
    assert "RMS distance to the reference (log10 weight_change.l2)" in res.stdout
    m = re.search(r"gamma\^(-?[0-9.]+) \[.*\] eta\^(-?[0-9.]+) \[", res.stdout)  # eta varies independently: both
    assert m and float(m[1]) == pytest.approx(-1.0, abs=0.05) and float(m[2]) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("args,code,text", [
    (["collapse", "--sweep", "nope"], 3, "no sweep named 'nope'"),
    (["collapse", "--sweep", "demo", "--eta", "0.5"], 2, "no run at eta = 0.5"),
    (["collapse", "--sweep", "demo", "--gamma-min", "1e6"], 2, "no finished runs with gamma >= 1e+06"),
    (["plot", "curves", "--sweep", "demo", "--where", "gamma > 1; DROP TABLE runs"], 2, "needs a number"),
    (["plot", "curves", "--sweep", "demo", "--where", "password = x"], 2, "is not allowed"),
    (["plot", "curves", "--sweep", "demo", "--where", "gamma > 1e9"], 2, "no run of sweep 'demo' matches"),
    (["plot", "curves", "--sweep", "demo", "--out", "x.gif"], 2, "charts export as"),
    (["plot", "metric", "--sweep", "demo", "--metric", "ntk_alignment"], 2, "no finite values of ntk_alignment"),
], ids=["no-sweep", "no-eta", "no-gamma", "injection", "column", "empty", "format", "no-metric"])
def test_clear_errors(url, tmp_path, args, code, text):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "c.json")] if args[0] == "plot" else args
    res = runner.invoke(APP, [*args, "--url", url])
    assert res.exit_code == code, res.output
    assert text in res.output and res.output.count("\n") == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("suffix,magic", [(".html", b"<!DOCTYPE html>"), (".json", b"{"), (".svg", b"<svg"),
                                          (".png", b"\x89PNG"), (".pdf", b"%PDF")],
                         ids=["html", "json", "svg", "png", "pdf"])
def test_plot_curves_exports(url, tmp_path, suffix, magic):
    out = tmp_path / f"curves{suffix}"
    res = run("plot", "curves", "--sweep", "demo", "--url", url, "--where", "eta = 0.1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "3 curves from 6 runs" in res.stdout
    data = out.read_bytes()
    assert data.startswith(magic)
    if suffix == ".html":  # self-contained: the Vega bundle inlined, nothing fetched
        text = data.decode()
        assert "vegaEmbed" in text and "cdn.jsdelivr" not in text and "<script src=" not in text
        assert len(data) > 500_000


def test_plot_curves_spec(url, tmp_path):
    out = tmp_path / "c.json"
    res = run("plot", "curves", "--sweep", "demo", "--url", url, "--where", "gamma >= 100 and eta = 0.1",
              "--x", "tau", "--out", str(out))
    assert res.exit_code == 0, res.output
    spec = json.loads(out.read_text())
    layers = spec["layer"]
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in layers]
    assert marks[:2] == ["area", "line"] and "rule" in marks and "point" in marks  # plateau bars, drop marks
    line = layers[1]["encoding"]
    assert line["x"]["field"] == "tau" and line["x"]["scale"]["type"] == "log"
    assert line["y"]["scale"]["type"] == "log" and line["stroke"] == {**line["stroke"], "field": "gamma", "type": "quantitative"}
    assert line["stroke"]["scale"]["type"] == "log"  # gamma grids are log-spaced
    data = next(iter(spec["datasets"].values()))
    assert {d["gamma"] for d in data} == {100.0, 1000.0}
    assert_tau_is_eta_t_over_gamma(spec, at_least=2)  # the curves and the plateau/drop marks


def assert_tau_is_eta_t_over_gamma(spec: dict, at_least: int) -> None:
    """Every data row that carries tau has tau = eta t / gamma (docs/theory.md's clock), not just a field of that name."""
    checked = 0
    for rows in spec["datasets"].values():
        rows = [r for r in rows if r.get("tau") is not None]
        for r in rows:
            assert r["tau"] == pytest.approx(r["eta"] * r["step"] / r["gamma"], rel=1e-12), r
            if r.get("tau_end") is not None:  # a plateau bar's right end
                assert r["tau_end"] == pytest.approx(r["eta"] * r["step_end"] / r["gamma"], rel=1e-12), r
        checked += bool(rows)
    assert checked >= at_least, "no data set carried tau"


def test_plot_collapse_and_metric(url, tmp_path):
    out = tmp_path / "col.json"
    res = run("plot", "collapse", "--sweep", "demo", "--url", url, "--eta", "0.1", "--out", str(out))
    assert res.exit_code == 0, res.output
    spec = json.loads(out.read_text())
    assert [p["encoding"]["x"]["field"] for p in spec["hconcat"]] == ["step", "tau", "t_fit"]
    assert_tau_is_eta_t_over_gamma(spec, at_least=1)
    out = tmp_path / "wc.json"
    res = run("plot", "metric", "--sweep", "demo", "--url", url, "--metric", "weight_change", "--facet", "eta",
              "--out", str(out))
    assert res.exit_code == 0, res.output
    spec = json.loads(out.read_text())
    assert spec["facet"]["field"] == "eta" and spec["spec"]["layer"][1]["encoding"]["stroke"]["field"] == "layer"
    assert "layers [1, 2]" in res.stdout
    out = tmp_path / "sh.svg"
    res = run("plot", "metric", "--sweep", "demo", "--url", url, "--metric", "sharpness", "--where", "eta = 0.1",
              "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<svg")


def test_sharpness_chart_has_edge_of_stability_line():
    bands = pl.DataFrame({"series": ["a"] * 3, "gamma": [10.0] * 3, "eta": [0.1] * 3, "step": [1.0, 10.0, 100.0],
                          "tau": [0.01, 0.1, 1.0], "mean": [0.1, 1.0, 19.0], "lo": [0.1, 1.0, 18.0],
                          "hi": [0.1, 1.0, 20.0], "n_runs": [1] * 3, "layer": [0] * 3})
    spec = chart_spec(metric_chart(bands, metric="sharpness", two_over_eta=True))
    rule = spec["spec"]["layer"][2]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y"]["field"] == "two_over_eta"
    assert spec["spec"]["layer"][3]["mark"]["type"] == "text"  # the line is labelled
    data = next(iter(spec["datasets"].values()))
    assert data[0]["two_over_eta"] == pytest.approx(20.0)


def test_curves_chart_handles_nan_and_nonpositive():
    bands = pl.DataFrame({"series": ["a"] * 4, "gamma": [10.0] * 4, "eta": [0.1] * 4, "step": [1.0, 2.0, 3.0, 4.0],
                          "tau": [0.01, 0.02, 0.03, 0.04], "mean": [1.0, float("nan"), -0.5, 0.2],
                          "lo": [1.0, 0.1, -1.0, 0.1], "hi": [1.0, 2.0, 0.0, 0.3], "n_runs": [1] * 4})
    spec = chart_spec(curves_chart(bands))  # mixed signs: linear y, NaN -> null (strict JSON)
    assert "scale" not in spec["layer"][1]["encoding"]["y"] or spec["layer"][1]["encoding"]["y"]["scale"].get("type") != "log"
    text = json.dumps(spec, allow_nan=False)
    assert "NaN" not in text


def test_plateaus_on_postgresql(pg_url):
    with Store.open(pg_url) as s:
        import_frame(s, family_frame([10.0, 100.0], [0.1], T=3000), "pg")
    res = run("plateaus", "--sweep", "pg", "--url", pg_url, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["n_drops"] for r in doc["runs"]] == [2, 1]
