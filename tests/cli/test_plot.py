"""`gammadb plot lr-curve` and `--include-diverged` through CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gammadb.cli import plot
from gammadb.cli.common import new_app
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_charts import _sweep

runner = CliRunner()
APP = new_app("test")
APP.add_typer(plot.app, name="plot")


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    u = f"sqlite:///{tmp_path_factory.mktemp('plot') / 'store.sqlite'}"
    with Store.open(u) as s:
        import_frame(s, _sweep(), "demo")
    return u


def test_plot_lr_curve(url, tmp_path):
    out = tmp_path / "lr.json"
    res = runner.invoke(APP, ["plot", "lr-curve", "--sweep", "demo", "--url", url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 gamma curves over 4 etas at step 400, 1 diverged (gamma, eta) cells marked" in res.stdout
    spec = json.loads(out.read_text())
    line = next(la for la in spec["layer"] if la["mark"]["type"] == "line")["encoding"]
    assert (line["x"]["field"], line["y"]["field"]) == ("eta", "loss")
    assert line["x"]["scale"]["type"] == line["y"]["scale"]["type"] == line["stroke"]["scale"]["type"] == "log"
    res = runner.invoke(APP, ["plot", "lr-curve", "--sweep", "demo", "--url", url, "--budget", "100",
                              "--out", str(tmp_path / "lr.png")])
    assert res.exit_code == 0 and "at step 100" in res.stdout
    assert (tmp_path / "lr.png").read_bytes().startswith(b"\x89PNG")


def test_plot_lr_curve_errors(url, tmp_path):
    res = runner.invoke(APP, ["plot", "lr-curve", "--sweep", "nope", "--url", url, "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0 and "nope" in res.output and "Traceback" not in res.output
    res = runner.invoke(APP, ["plot", "lr-curve", "--sweep", "demo", "--url", url, "--out", str(tmp_path / "x.gif")])
    assert res.exit_code == 2 and "charts export as" in res.output


def test_plot_curves_leaves_diverged_out_unless_asked(url, tmp_path):
    out = tmp_path / "c.json"
    res = runner.invoke(APP, ["plot", "curves", "--sweep", "demo", "--url", url, "--no-marks", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "9 curves from 18 runs" in res.stdout and "1 diverged runs left out" in res.stdout
    res = runner.invoke(APP, ["plot", "curves", "--sweep", "demo", "--url", url, "--no-marks", "--include-diverged",
                              "--out", str(out)])
    assert res.exit_code == 0 and "10 curves from 19 runs" in res.stdout and "left out" not in res.stdout
    res = runner.invoke(APP, ["plot", "curves", "--sweep", "demo", "--url", url, "--where", "eta = 30",
                              "--out", str(out)])
    assert res.exit_code == 2 and "every selected run diverged (1 runs): pass --include-diverged" in res.output
