"""`gammadb analyze optimal-lr | fit | phase` through CliRunner, and the charts as Vega-Lite specs."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from gammadb.analysis import charts_lr
from gammadb.analysis import optimal_lr as olr
from gammadb.analysis import phase as ph
from gammadb.cli import app
from gammadb.cli.analyze import app as analyze_app
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.conftest import BACKENDS, _pg_database
from tests.analysis.test_optimal_lr import GAMMAS, reference_table, synth

runner = CliRunner()
def known_law(offset: float) -> pl.DataFrame:
    """Nine runs, etas 0.1 to 100.5, whose loss falls from 10 at step 0 to 3 eta^-0.5 + offset."""
    etas = [10 ** (k / 2) for k in range(-2, 5)] + [10 ** (k / 2) + 0.5 for k in (2, 4)]
    return pl.DataFrame([{"gamma": 1.0, "eta": eta, "seed": 0, "step": step,
                          "loss": 10.0 if step == 0 else 3 * eta**-0.5 + offset}
                         for eta in etas for step in range(3)])


CLI_SWEEPS = {
    "law": lambda: synth(gammas=GAMMAS[:4] + GAMMAS[7:], seeds=(0, 1)),
    "power": lambda: known_law(0.0),
    "offset": lambda: known_law(0.2),
    "one-gamma": lambda: synth(gammas=[1.0], seeds=(0,)),
    "boom": lambda: synth(gammas=[1.0, 10.0], seeds=(0,), span=(2.0, 3.0)),
}


@pytest.fixture(scope="module", params=BACKENDS)
def cli_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store per backend with a small known-law sweep and two edge cases, for read-only commands."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('cli') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    store = Store.open(next(urls))
    for name, make in CLI_SWEEPS.items():
        import_frame(store, make(), name)
    try:
        yield store
    finally:
        store.close()
        next(urls, None)


def url_of(store: Store) -> str:
    return store.url.render_as_string(hide_password=False)


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["analyze", *args])


def one_line_error(res: Any, code: int, text: str) -> None:
    assert res.exit_code == code, res.output
    assert res.stdout == ""
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert text in res.stderr, res.stderr


# ---------------------------------------------------------------------- optimal-lr
def test_optimal_lr_json(cli_store: Store) -> None:
    res = invoke("optimal-lr", "--url", url_of(cli_store), "--sweep", "law", "--json", "--n-boot", "50",
                 "--criterion", "final", "--budget", "25", "--small-max", "0.05", "--large-min", "20")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # exactly one JSON object
    assert (doc["sweep"], doc["budget_step"], doc["criterion"]) == ("law", 25, "final")
    fits = doc["groups"][0]["fits"]
    small = [f for f in fits if f["target"] == "eta_star" and f["regime"] == "small_gamma"][0]
    assert small["gamma_range"][1] < 0.05 and small["exponent"] == pytest.approx(2.0, abs=0.15)
    large = [f for f in fits if f["target"] == "eta_star" and f["regime"] == "large_gamma"][0]
    assert large["gamma_range"][0] > 20


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the rich tables in ``text`` (a wrapped cell's continuation lines skipped)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cells[0]:
                rows.append(cells)
    return rows


def test_optimal_lr_table_and_converged_threshold(cli_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # a terminal wide enough for no header to wrap
    res = invoke("optimal-lr", "--url", url_of(cli_store), "--sweep", "law", "--n-boot", "20",
                 "--converged", "0.02", "--threshold", "0.05")
    assert res.exit_code == 0, res.output
    words = " ".join(res.stdout.split())  # titles wrap at the terminal's width
    assert "per gamma, budget step 30, criterion tail-mean" in words
    assert "power laws of eta*" in words and "vs gamma" in words
    assert "smoothly broken power law of eta*" in words
    strict = olr.analyze(cli_store, "law", settings=olr.Settings(converged=0.02, threshold=0.05, n_boot=20)).points
    loose = olr.analyze(cli_store, "law", settings=olr.Settings(n_boot=20)).points
    # The options move the edges: "trained" needs loss <= 2% of the initial loss (eta_max drops a grid
    # step at most gammas), "off the plateau" loss < 5% of it (eta_min rises off the grid's bottom).
    assert (strict["eta_max"] <= loose["eta_max"]).all() and (strict["eta_max"] < loose["eta_max"]).sum() >= 4
    assert (strict["eta_min"] > loose["eta_min"]).all()
    assert strict["eta_stable"].to_list() == loose["eta_stable"].to_list()
    # the per-gamma table: gamma, eta_star, ci_lo, ci_hi, eta_max, eta_stable, eta_conv, eta_min, ... (the
    # fits table has 11 columns too, and a name first)
    per_gamma = {float(r[0]): r for r in table_rows(res.stdout) if len(r) == 11 and r[0][0].isdigit()}
    assert sorted(per_gamma) == pytest.approx(strict["gamma"].to_list())
    for p in strict.iter_rows(named=True):
        row = per_gamma[min(per_gamma, key=lambda g: abs(g - p["gamma"]))]
        shown = dict(zip(("eta_star", "eta_max", "eta_stable", "eta_min"), map(float, (row[1], row[4], row[5], row[7]))))
        assert shown == pytest.approx({k: p[k] for k in shown}, rel=1e-5), p["gamma"]


@pytest.mark.parametrize("suffix", ["html", "json", "svg"])
def test_optimal_lr_chart_files(cli_store: Store, tmp_path: Path, suffix: str) -> None:
    if "postgresql" in url_of(cli_store):
        pytest.skip("rendering is backend-independent: once is enough")
    out = tmp_path / f"chart.{suffix}"
    flag = "--chart" if suffix == "svg" else "--out"  # --chart: the old name, still accepted
    res = invoke("optimal-lr", "--url", url_of(cli_store), "--sweep", "law", "--n-boot", "20", "--json",
                 flag, str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sweep"] == "law"  # stdout stays one JSON object; the file is on stderr
    assert res.stderr.strip() == f"wrote {out}"
    text = out.read_text()
    if suffix == "html":  # self-contained: the Vega libraries are inlined, nothing is fetched
        assert "<html" in text and "vegaEmbed" in text and "cdn.jsdelivr.net" not in text
    elif suffix == "json":
        spec = json.loads(text)
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        assert "vconcat" in spec
    else:
        assert text.lstrip().startswith("<svg") and "eta (learning rate)" in text


def test_phase_renders_a_png(cli_store: Store, tmp_path: Path) -> None:
    if "postgresql" in url_of(cli_store):
        pytest.skip("rendering is backend-independent: once is enough")
    out = tmp_path / "phases.png"
    res = invoke("phase", "--url", url_of(cli_store), "--sweep", "law", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip().endswith(f"wrote {out}")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "trainable band per gamma" in res.stdout


def test_single_gamma_is_reported_not_failed(cli_store: Store) -> None:
    res = invoke("optimal-lr", "--url", url_of(cli_store), "--sweep", "one-gamma", "--json", "--n-boot", "20")
    assert res.exit_code == 0, res.output
    g = json.loads(res.stdout)["groups"][0]
    assert all(f["exponent"] is None and "need >= 3" in f["reason"] for f in g["fits"])
    assert g["broken_power_law"]["slope_small"] is None


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--sweep", "boom"], 2, "every run of sweep 'boom' diverged"),
    (["--sweep", "one-gamma", "--budget", "999"], 2, "budget step 999 was not reached"),
    (["--sweep", "one-gamma", "--criterion", "median"], 2, "--criterion 'median': use one of final, tail-mean, min, test"),
    (["--sweep", "one-gamma", "--criterion", "test"], 2, "no test-loss series"),
    (["--sweep", "one-gamma", "--chart", "out.gif"], 2, "use one of .html, .json, .svg, .png, .pdf"),
    (["--sweep", "one-gamma", "--out", "a.html", "--chart", "b.html"], 2, "give the chart file once"),
    (["--sweep", "one-gamma", "--converged", "0.95"], 2, "--converged (0.95) must be below --threshold (0.9)"),
    (["--sweep", "nope"], 3, "no sweep named 'nope'"),
], ids=["all-diverged", "missing-budget", "bad-criterion", "no-test-loss", "bad-chart", "two-chart-files", "bad-fraction",
        "unknown-sweep"])
def test_optimal_lr_errors_are_one_line(cli_store: Store, args: list[str], code: int, text: str) -> None:
    one_line_error(invoke("optimal-lr", "--url", url_of(cli_store), *args), code, text)


# ---------------------------------------------------------------------- fit
def test_fit_sql_json(cli_store: Store) -> None:
    sql = ("SELECT gamma, MIN(final_loss) AS best, COUNT(*) AS n FROM run_overview "
           "WHERE sweep = 'law' AND status = 'completed' GROUP BY gamma")
    res = invoke("fit", "--url", url_of(cli_store), "--sql", sql, "--x", "gamma", "--y", "n", "--json",
                 "--n-boot", "50", "--xmin", "0.001", "--xmax", "1000")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["source"] == sql and (doc["x"], doc["y"]) == ("gamma", "n")
    assert doc["n_rows"] == 8 and doc["power_law"]["n_points"] == 8
    assert abs(doc["power_law"]["exponent"]) < 0.1  # the same number of runs at every gamma


def test_fit_sweep_table(cli_store: Store) -> None:
    """The sweep 'power' ends every run at loss 3 eta^-0.5 (+ 0.2 in 'offset'): the fitted laws are known."""
    res = invoke("fit", "--url", url_of(cli_store), "--sweep", "power", "--x", "eta", "--y", "min_loss",
                 "--n-boot", "20", "--xmin", "1")
    assert res.exit_code == 0, res.output
    assert "min_loss against eta: 7 rows, 0 dropped" in res.stdout  # the etas 0.1 and 0.3 are below --xmin
    rows = {r[0]: r for r in table_rows(res.stdout)}
    law, offset = rows["y = A x^k"], rows["y = a x^-alpha + c"]
    # exponent, ci_lo, ci_hi, prefactor, offset, r2, n_points: an exact power law is fitted exactly
    assert [float(v) for v in law[1:5]] == pytest.approx([-0.5, -0.5, -0.5, 3.0], rel=1e-5)
    assert (float(law[6]), law[7]) == (pytest.approx(1.0), "7")
    assert [float(v) for v in (offset[1], offset[4])] == pytest.approx([-0.5, 3.0], rel=1e-3)
    assert abs(float(offset[5])) < 1e-3 and offset[7] == "7"
    res = invoke("fit", "--url", url_of(cli_store), "--sweep", "offset", "--x", "eta", "--y", "final_loss",
                 "--n-boot", "20")
    assert res.exit_code == 0, res.output
    offset = {r[0]: r for r in table_rows(res.stdout)}["y = a x^-alpha + c"]
    assert [float(v) for v in (offset[1], offset[4], offset[5])] == pytest.approx([-0.5, 3.0, 0.2], rel=1e-3)
    assert offset[7] == "9"


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--x", "gamma", "--y", "eta"], 2, "give exactly one of --sql QUERY or --sweep NAME"),
    (["--sweep", "law", "--sql", "SELECT 1", "--x", "gamma", "--y", "eta"], 2, "give exactly one"),
    (["--sweep", "law", "--x", "gamma", "--y", "nope"], 2, "no column 'nope'"),
    (["--sql", "DELETE FROM runs", "--x", "a", "--y", "b"], 6, "refused: the store is opened read-only"),
    (["--sql", "SELECT * FROM nothing_here", "--x", "a", "--y", "b"], 1, "SQL error"),
], ids=["neither", "both", "missing-column", "write", "bad-sql"])
def test_fit_errors_are_one_line(cli_store: Store, args: list[str], code: int, text: str) -> None:
    one_line_error(invoke("fit", "--url", url_of(cli_store), *args), code, text)


# ---------------------------------------------------------------------- phase
def test_phase_json(cli_store: Store) -> None:
    res = invoke("phase", "--url", url_of(cli_store), "--sweep", "law", "--json", "--threshold", "0.5",
                 "--spike", "3")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["sweep"], doc["threshold"], doc["spike"]) == ("law", 0.5, 3.0)
    phases = {c["phase"] for c in doc["groups"][0]["cells"]}
    assert {"diverged", "trained"} <= phases <= set(ph.PHASES)


def test_phase_errors_are_one_line(cli_store: Store) -> None:
    one_line_error(invoke("phase", "--url", url_of(cli_store), "--sweep", "boom"), 2, "diverged")
    one_line_error(invoke("phase", "--url", url_of(cli_store), "--sweep", "law", "--spike", "0.5"), 2,
                   "--spike must be a factor above 1")


def test_every_command_has_help_with_an_example() -> None:
    names = sorted(c.name for c in analyze_app.registered_commands)
    assert {"fit", "optimal-lr", "phase"} <= set(names)
    for name in names:
        res = invoke(name, "--help")
        assert res.exit_code == 0 and "Example: gammadb analyze " + name in res.stdout


# ---------------------------------------------------------------------- charts as specs
@pytest.fixture(scope="module")
def result() -> olr.OptimalLr:
    return olr.analyze_runs(reference_table(synth(), 30), "law", olr.Settings(n_boot=50))


def _layers(spec: dict) -> list[dict]:
    return spec["layer"]


def _data(spec: dict, layer: dict) -> list[dict]:
    return spec["datasets"][layer["data"]["name"]]


def test_phase_portrait_spec(result: olr.OptimalLr) -> None:
    spec = charts_lr.phase_portrait(result).to_dict()
    layers = _layers(spec)
    heat, div = layers[0], layers[1]
    for layer in layers:
        enc = layer["encoding"]
        assert enc["x"]["scale"]["type"] == "log" and enc["y"]["scale"]["type"] == "log"
        assert all("type" in v for k, v in enc.items() if k not in ("x2", "y2") and "field" in v), enc
    assert heat["mark"]["type"] == "rect" and heat["encoding"]["color"]["scale"]["type"] == "log"
    assert heat["encoding"]["color"]["type"] == "quantitative"
    # diverged cells are drawn (dark and crossed), not left blank
    assert div["mark"] == {"type": "rect", "color": charts_lr.DIVERGED_FILL}
    n_div = result.cells["diverged"].sum()
    assert n_div > 0 and len(_data(spec, div)) == n_div
    assert layers[2]["mark"]["shape"] == "cross" and len(_data(spec, layers[2])) == n_div
    # eta* points, the fitted lines (solid) and theory guides (dashed)
    line_layers = [la for la in layers if la["mark"]["type"] == "line"]
    dash = line_layers[0]["encoding"]["strokeDash"]
    assert dash["field"] == "kind" and dict(zip(dash["scale"]["domain"], dash["scale"]["range"])) == {
        "fit": [1, 0], "theory": [6, 4]}
    lines = _data(spec, line_layers[-1])
    assert {r["line"] for r in lines if r["kind"] == "theory"} == {
        "eta_star theory small gamma", "eta_star theory large gamma"}
    assert {r["label"] for r in lines if r["kind"] == "theory"} == {"theory 2", "theory 0.667"}


def test_eta_vs_gamma_spec(result: olr.OptimalLr) -> None:
    spec = charts_lr.eta_vs_gamma(result).to_dict()
    layers = _layers(spec)
    bars, dots = layers[0], layers[1]
    assert bars["mark"]["type"] == "rule" and bars["encoding"]["y2"]["field"] == "eta_star_hi"
    assert dots["encoding"]["color"]["field"] == "target" and dots["encoding"]["color"]["type"] == "nominal"
    assert {r["target"] for r in _data(spec, dots)} == {"eta_star", "eta_max"}
    assert len(_data(spec, bars)) == result.points.height
    assert dots["encoding"]["x"]["scale"]["type"] == "log"
    fit_rows = [r for r in _data(spec, layers[2]) if r["kind"] == "fit"]
    assert len(fit_rows) == 8  # 2 targets x 2 regimes x 2 endpoints


def test_optimal_lr_chart_has_a_row_per_group(result: olr.OptimalLr) -> None:
    spec = charts_lr.optimal_lr_chart(result).to_dict()
    assert len(spec["vconcat"]) == 1 and len(spec["vconcat"][0]["hconcat"]) == 2


def test_phase_chart_spec() -> None:
    from tests.analysis.test_phase import LAYOUT, layout_frame

    pm = ph.phase_map(reference_table(layout_frame(), 40).frame, "phases", 40)
    spec = charts_lr.phase_chart(pm).to_dict()
    panel = spec["vconcat"][0]
    rect, cross, line = panel["layer"]
    assert rect["encoding"]["color"]["scale"]["domain"] == list(ph.PHASES)
    assert rect["encoding"]["color"]["type"] == "nominal"
    assert len(_data(spec, rect)) == len(LAYOUT)
    assert len(_data(spec, cross)) == 3 and cross["mark"]["shape"] == "cross"
    assert line["encoding"]["strokeDash"]["field"] == "edge"
    assert rect["encoding"]["x"]["scale"]["type"] == "log" and rect["encoding"]["y"]["scale"]["type"] == "log"


def test_cell_edges_are_geometric_midpoints() -> None:
    cells = pl.DataFrame({"gamma": [1.0, 1.0, 100.0], "eta": [0.01, 1.0, 0.1]})
    got = charts_lr.cell_rects(cells).sort("gamma", "eta")
    assert got["gamma_lo"].to_list() == pytest.approx([0.1, 0.1, 10.0])
    assert got["gamma_hi"].to_list() == pytest.approx([10.0, 10.0, 1000.0])
    assert got["eta_lo"].to_list() == pytest.approx([0.001, 0.1, 0.1 / 10**0.125])
    assert got["eta_hi"].to_list() == pytest.approx([0.1, 10.0, 0.1 * 10**0.125])
