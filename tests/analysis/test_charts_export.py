"""One chart exporter (gammadb.analysis.charts_export) for every command and the report."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import polars as pl
import pytest

from gammadb.analysis import charts_export
from gammadb.analysis.charts_export import save_chart
from gammadb.errors import InvalidSpecError


def tiny() -> alt.Chart:
    df = pl.DataFrame({"step": [1, 10, 100], "loss": [1.0, 0.5, 0.1]})
    return alt.Chart(df).mark_line().encode(x=alt.X("step:Q").scale(type="log"), y="loss:Q")


@pytest.mark.parametrize(("suffix", "magic"), [(".html", b"<!DOCTYPE html>"), (".json", b"{"), (".png", b"\x89PNG")],
                         ids=["html", "json", "png"])
def test_writes_by_suffix(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = save_chart(tiny(), tmp_path / f"c{suffix}")
    data = out.read_bytes()
    assert data.startswith(magic)
    if suffix == ".html":  # self-contained: the Vega bundle inlined, nothing fetched
        text = data.decode()
        assert "vegaEmbed(" in text and "cdn.jsdelivr.net" not in text and len(text) > 100_000
    elif suffix == ".json":
        assert json.loads(data)["mark"]["type"] == "line"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left behind


def test_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match=r"^--out \S*x\.gif: charts export as .*use one of \.html, \.json, "
                                               r"\.svg, \.png, \.pdf$"):
        save_chart(tiny(), tmp_path / "x.gif", "--out")
    with pytest.raises(InvalidSpecError, match="does not exist"):
        save_chart(tiny(), tmp_path / "nope" / "c.json")


def test_the_commands_share_it() -> None:
    from gammadb.cli import analyze, plot

    assert analyze.save_chart is charts_export.save_chart and plot.save_chart is charts_export.save_chart
    assert not hasattr(analyze, "CHART_SUFFIXES")
