"""`gammadb report`: one self-contained HTML page, checked as text and in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from gammadb.analysis.report import write_report
from gammadb.analysis.report_html import html_table
from gammadb.cli.common import new_app
from gammadb.cli.report import report
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_curves import family_frame

runner = CliRunner()
APP = new_app("test")
APP.command("report")(report)
APP.command("noop")(lambda: None)  # two commands keep `report` a subcommand, as in the root app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SECTIONS = ["summary", "spec", "optimal-lr", "phases", "curves", "plateaus", "collapse", "metrics"]


def small_sweep() -> pl.DataFrame:
    df = family_frame([10.0, 100.0, 1000.0], [0.03, 0.1], T=10_000, metrics=True)
    logged = np.unique(np.round(np.logspace(0, 4, 30))).astype(np.int64)
    df = df.with_columns(pl.when(pl.col("step").is_in(logged)).then(pl.col(c)).otherwise(None).alias(c)
                         for c in ("weight_change.l1", "weight_change.l2", "feature_alignment"))
    t = np.arange(0, 200)
    div = pl.DataFrame({"gamma": 10.0, "eta": 1.0, "seed": 0, "step": t, "depth": 3, "model": "toy",
                        "loss": np.where(t >= 150, np.nan, np.exp(t / 40))})
    return pl.concat([df, div], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    u = f"sqlite:///{tmp_path_factory.mktemp('report') / 'store.sqlite'}"
    with Store.open(u) as s:
        import_frame(s, small_sweep(), "demo")
        import_frame(s, pl.DataFrame({"gamma": 10.0, "eta": 1.0, "seed": 0, "step": [0, 1],
                                      "loss": [1.0, float("inf")]}), "all-diverged")
    return u


@pytest.fixture(scope="module")
def page(url, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    res = runner.invoke(APP, ["report", "--sweep", "demo", "--out", str(out), "--url", url, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["charts"] >= 6 and [s["id"] for s in doc["sections"]] == SECTIONS
    return out


def test_report_is_self_contained(page):
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "gammadb report: sweep demo" in text
    for sid in SECTIONS:
        assert f"<section id='{sid}'>" in text
    # nothing is fetched: no external script, stylesheet, image or font
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?https?:", text)
    assert "vegaEmbed" in text and text.count("<figure class='chart'>") >= 6
    specs = json.loads(re.search(r"const SPECS = (\{.*?\});\n", text, re.S).group(1).replace("<\\/", "</"))
    assert all("$schema" in s for s in specs.values())
    # the summary first: the claims verdict, the eta* chart and the U-curve; long tables folded away
    summary = text[text.index("<section id='summary'>"):text.index("<section id='spec'>")]
    assert "claims verdict" in summary and summary.count("<figure class='chart'>") == 2
    assert "against eta, one line per gamma" in json.dumps(specs)
    assert "<details class='table'><summary>per run" in text
    assert "Smoothly broken power law of eta*" in text
    # the tables are there, escaped
    assert "plateau length (escape_step) ~ gamma^p" in text and "RMS distance to the reference" in text
    assert "diverged at step 150" in text


def test_report_static_has_no_javascript(url, tmp_path):
    with Store.open(url) as s:
        rep = write_report(s, "demo", tmp_path / "r.html", static=True, include_lr=False)
    text = (tmp_path / "r.html").read_text()
    assert "<script" not in text and text.count("<svg") >= 5 and rep.charts >= 5
    assert [x["id"] for x in rep.sections] == [s for s in SECTIONS if s not in ("optimal-lr", "phases")]
    assert text.index("<section id='summary'>") < text.index("<section id='spec'>")  # the findings come first


def test_report_of_a_hopeless_sweep_still_writes(url, tmp_path):
    out = tmp_path / "bad.html"
    res = runner.invoke(APP, ["report", "--sweep", "all-diverged", "--out", str(out), "--url", url])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "class='note'" in text and "collapse" in text
    assert "Traceback" not in text and "Traceback" not in res.output


def test_report_errors(url, tmp_path):
    res = runner.invoke(APP, ["report", "--sweep", "nope", "--out", str(tmp_path / "x.html"), "--url", url])
    assert res.exit_code == 3 and "no sweep named 'nope'" in res.output
    res = runner.invoke(APP, ["report", "--sweep", "demo", "--out", str(tmp_path / "x.pdf"), "--url", url])
    assert res.exit_code == 2 and ".html" in res.output


def test_report_reads_each_loss_series_once_and_finds_plateaus_once(url, monkeypatch):
    """The claims, the plateaus, the curves and the collapse all bucket the loss: one read of each
    run's series; the claims' plateau analysis is the plateaus section's."""
    from collections import Counter

    from gammadb.analysis import plateaus
    from gammadb.analysis.report import build_report

    detects = []
    real_detect = plateaus.detect_plateaus
    monkeypatch.setattr(plateaus, "detect_plateaus", lambda *a, **k: detects.append(1) or real_detect(*a, **k))
    with Store.open(url) as store:
        with store.engine.begin() as conn:  # what earlier tests cached (tests/store/test_bucket_cache.py)
            conn.exec_driver_sql("DELETE FROM series_buckets")
        loss = store.metric_id("loss")
        reads: list[int] = []
        real = store.values_frame

        def values_frame(run_ids, metric, *, lo=None, hi=None):
            if metric == loss and hi is None:  # whole series (a few first steps are read for the initial loss)
                reads.extend(int(r) for r in run_ids)
            return real(run_ids, metric, lo=lo, hi=hi)

        monkeypatch.setattr(store, "values_frame", values_frame)
        text, sections = build_report(store, "demo")
        n_runs = store.runs_frame("demo").height
    assert [s.id for s in sections] == SECTIONS and all(s.ok for s in sections if s.id != "metrics")
    assert len(detects) == 1
    assert Counter(reads).most_common(1)[0][1] == 1 and len(reads) == n_runs

def test_html_table_escapes_and_truncates():
    df = pl.DataFrame({"a": ["<b>x</b>", "y"], "v": [1.23456789, float("nan")]})
    out = html_table(df, "t <1>", max_rows=1)
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "1.235" in out and "1 more rows" in out and "t &lt;1&gt;" in out


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(page, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=10000"]
    shot = tmp_path / "report.png"
    dom = subprocess.run([*flags, "--window-size=1400,5000", f"--screenshot={shot}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    n_vis = dom.count("class=\"vis")
    assert n_vis >= 6
    # vega-embed replaced every placeholder with an SVG; none reported a failure
    assert len(re.findall(r"<svg[^>]*class=\"marks\"", dom)) >= n_vis and 'class="vis failed"' not in dom
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 100_000  # a blank page compresses to a few kB


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_fits_a_1400px_window(page, tmp_path):
    """No sideways scrolling at 1,400 px, and every chart drawn: a copy of the page writes the
    document's scroll width and each chart's SVG count into the DOM after rendering."""
    text = page.read_text()
    probe = ("<script>window.addEventListener('load', () => setTimeout(() => {"
             "const p = document.createElement('pre'); p.id = 'probe';"
             "const vis = [...document.querySelectorAll('div.vis')];"
             "p.textContent = 'PROBE ' + JSON.stringify({scroll: document.documentElement.scrollWidth,"
             "client: document.documentElement.clientWidth, charts: vis.length,"
             "drawn: vis.filter(v => v.querySelector('svg, canvas')).length}) + ' END';"
             "document.body.appendChild(p); }, 2000));</script>")
    at = text.rindex("</body>")
    copy = tmp_path / "probe.html"
    copy.write_text(text[:at] + probe + text[at:])
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, "--window-size=1400,3000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    got = json.loads(re.search(r"PROBE (\{.*?\}) END", dom).group(1))
    assert got["client"] == 1400 and got["scroll"] <= got["client"], got
    assert got["charts"] >= 6 and got["drawn"] == got["charts"], got
