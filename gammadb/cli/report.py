"""gammadb report: one self-contained HTML page for a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gammadb.cli.common import JsonOpt, SweepOpt, UrlOpt, echo, print_json


def report(
    sweep: SweepOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="The .html file to write.")] = Path("report.html"),
    static: Annotated[bool, typer.Option(
        "--static", help="Inline rendered SVGs instead of interactive charts (no JavaScript in the page).")] = False,
    gamma_min: Annotated[float, typer.Option(
        "--gamma-min", help="Plateau scaling and collapse use gamma >= this; 0 for all.")] = 1.0,
    json_: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Write one offline HTML report of a sweep: spec, phase portrait and eta* fits, curves,
    plateaus, collapse and per-step metrics, with their tables.

    Example: gammadb report --sweep quick --out report.html
    """
    from gammadb.analysis.report import write_report
    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        rep = write_report(store, sweep, out, static=static, gamma_min=gamma_min or None)
    if json_:
        print_json({"path": str(rep.path), "sweep": rep.sweep, "bytes": rep.bytes, "charts": rep.charts,
                    "sections": rep.sections})
        return
    echo(f"wrote {out}: {rep.charts} charts, {rep.bytes / 1e6:.1f} MB")
    for s in rep.sections:
        for n in s["notes"]:
            echo(f"  {s['title']}: {n}")
