"""The report page as HTML: its sections, charts and tables rendered into one self-contained page.

Owns the page being collected (:class:`Page` and each :class:`Section`: charts as vega-embed specs or
inline SVGs, tables, text and notes), the formatting of values and tables (:func:`fmt`,
:func:`html_table`), the page's CSS and :func:`render`, which writes the whole document with the
Vega bundle inlined once. What goes into each section is built by :mod:`gammadb.analysis.report`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import math
from typing import TYPE_CHECKING, Any

import polars as pl

from gammadb import __version__

if TYPE_CHECKING:
    from gammadb.store import Store

MAX_TABLE_ROWS = 400


@dataclasses.dataclass
class Section:
    id: str
    title: str
    blocks: list[str] = dataclasses.field(default_factory=list)  # html fragments
    notes: list[str] = dataclasses.field(default_factory=list)
    charts: int = 0
    ok: bool = True


class Page:
    """Collects sections; charts become either vega-embed specs or inline SVGs."""

    def __init__(self, static: bool) -> None:
        self.static = static
        self.specs: list[tuple[str, str]] = []  # (div id, Vega-Lite spec as JSON text)
        self.sections: list[Section] = []

    def section(self, sid: str, title: str) -> Section:
        s = Section(sid, title)
        self.sections.append(s)
        return s

    def chart(self, sec: Section, chart: Any, caption: str = "") -> None:
        from gammadb.analysis.charts_export import chart_json

        spec = chart_json(chart)
        cap = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
        if self.static:
            import vl_convert as vlc

            svg = vlc.vegalite_to_svg(spec)
            sec.blocks.append(f"<figure class='chart'>{svg}{cap}</figure>")
        else:
            div = f"chart-{len(self.specs)}"
            self.specs.append((div, spec))
            sec.blocks.append(f"<figure class='chart'><div id='{div}' class='vis'></div>{cap}</figure>")
        sec.charts += 1

    def table(self, sec: Section, df: pl.DataFrame, title: str = "", max_rows: int = MAX_TABLE_ROWS,
              folded: bool = True) -> None:
        """A table; ``folded`` (the default) puts it in a closed <details> with its title and size, so
        the page reads as charts and findings, the numbers one click away."""
        t = html_table(df, "" if folded else title, max_rows)
        if folded:
            t = (f"<details class='table'><summary>{html.escape(title or 'table')} "
                 f"({df.height} row{'s' if df.height != 1 else ''})</summary>{t}</details>")
        sec.blocks.append(t)

    def text(self, sec: Section, text: str, cls: str = "") -> None:
        c = f" class='{cls}'" if cls else ""
        sec.blocks.append(f"<p{c}>{html.escape(text)}</p>")

    def note(self, sec: Section, text: str) -> None:
        sec.notes.append(text)


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items())
    return str(v)


def html_table(df: pl.DataFrame, title: str = "", max_rows: int = MAX_TABLE_ROWS) -> str:
    """An escaped HTML table (at most ``max_rows`` rows, the rest counted)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = "".join(
            f"<td class='{'num' if isinstance(v, (int, float)) and not isinstance(v, bool) else ''}'>"
            f"{html.escape(fmt(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = (f"<p class='more'>{df.height - max_rows} more rows not shown (use the CLI's --json for all)</p>"
            if df.height > max_rows else "")
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<div class='tablewrap'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}</div>"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1f2328;background:#fff}
header{background:#24292f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:0;color:#c9d1d9;font-size:13px}nav{padding:8px 32px;border-bottom:1px solid #d0d7de;font-size:14px}
nav a{margin-right:16px;color:#0969da;text-decoration:none}main{padding:0 32px 40px 32px;max-width:1300px}
main,section{box-sizing:border-box;min-width:0}
.vis svg,figure.chart>svg{max-width:100%;height:auto}details.table{margin:8px 0;max-width:100%;overflow-x:auto}
details.table>summary{cursor:pointer;font-size:13px;color:#0969da}.verdict{font-size:15px}
section{margin-top:28px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;font-size:19px}
figure.chart{margin:12px 0 18px 0;max-width:100%}.caption{font-size:12px;color:#57606a;margin:4px 0}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px;font-size:14px;margin:8px 0}
.method{font-size:13px;color:#57606a}.tablewrap{overflow-x:auto;max-width:100%;margin:10px 0 16px 0}
table{border-collapse:collapse;font-size:12px}caption{text-align:left;font-weight:600;padding:4px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 7px;white-space:nowrap}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.more{font-size:12px;color:#57606a}pre{background:#f6f8fa;padding:10px;font-size:12px;overflow-x:auto}
"""


def render(page: Page, store: "Store", sweep: str, runs: pl.DataFrame) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in page.sections)
    body = []
    for s in page.sections:
        notes = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in s.notes)
        body.append(f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>{notes}{''.join(s.blocks)}</section>")
    script = ""
    if page.specs and not page.static:
        from gammadb.analysis.charts_export import script_safe, vega_bundle

        bundle = vega_bundle()
        specs = script_safe("{" + ",".join(f"{json.dumps(div)}:{spec}" for div, spec in page.specs) + "}")
        script = (f"<script type='text/javascript'>{bundle}</script>\n"
                  f"<script type='text/javascript'>\nconst SPECS = {specs};\n"
                  "for (const [id, spec] of Object.entries(SPECS)) {\n"
                  "  vegaEmbed('#' + id, spec, {renderer: 'svg', actions: false}).catch(err => {\n"
                  "    const el = document.getElementById(id);\n"
                  "    el.classList.add('failed'); el.textContent = 'chart failed to render: ' + err; });\n}\n"
                  "</script>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>gammadb report: {html.escape(sweep)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>gammadb report: sweep {html.escape(sweep)}</h1>"
        f"<p>{runs.height} runs &middot; store {html.escape(store.display_url)} &middot; gammadb {__version__} &middot; {now}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(body)}</main>{script}</body></html>\n"
    )
