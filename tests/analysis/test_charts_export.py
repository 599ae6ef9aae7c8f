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


class Builds:
    """A stand-in for vl-convert's 4-8 s bundle build that counts its calls."""

    def __init__(self, text: str = "/* vega */ const x = 'é';\r\nvegaEmbed;\n") -> None:
        self.text, self.calls = text, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.text


def test_the_vega_bundle_is_built_once_and_then_read_from_disk(tmp_path: Path) -> None:
    build = Builds()
    assert charts_export.cached_bundle(tmp_path, "vlc1.9.0-vlv6_4", build) == build.text
    assert charts_export.cached_bundle(tmp_path, "vlc1.9.0-vlv6_4", build) == build.text  # a later process
    assert build.calls == 1
    (cached,) = tmp_path.iterdir()  # one file, no temporary left behind
    assert cached.name == "vega-bundle-vlc1.9.0-vlv6_4.js"
    assert charts_export.cached_bundle(tmp_path, "vlc1.9.1-vlv6_4", build) == build.text  # new version: new file
    assert build.calls == 2 and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "altered"], ids=["empty", "truncated", "altered"])
def test_a_damaged_bundle_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    build = Builds()
    charts_export.cached_bundle(tmp_path, "k", build)
    (cached,) = tmp_path.iterdir()
    data = cached.read_bytes()
    damaged = {"empty": b"", "truncated": data[:-5], "altered": data.replace(b"vegaEmbed", b"vegaEmbeD")}
    cached.write_bytes(damaged[damage])
    assert charts_export.cached_bundle(tmp_path, "k", build) == build.text
    assert build.calls == 2 and cached.read_bytes() == data  # repaired
    assert charts_export.cached_bundle(tmp_path, "k", build) == build.text and build.calls == 2


def test_an_unwritable_bundle_cache_only_costs_the_build(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    build = Builds()
    for _ in range(2):
        assert charts_export.cached_bundle(blocker / "gammadb", "k", build) == build.text
    assert build.calls == 2 and blocker.read_text() == "not a directory"
    assert charts_export.cached_bundle(None, "k", build) == build.text and build.calls == 3


def test_the_bundle_cache_lives_under_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert charts_export.bundle_cache_dir() == tmp_path / "gammadb"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")  # the XDG spec: only absolute paths count
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert charts_export.bundle_cache_dir() == tmp_path / "home" / ".cache" / "gammadb"
