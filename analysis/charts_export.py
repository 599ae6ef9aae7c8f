"""Chart export, one way for every command and the report: a chart is saved by its file's suffix.

.html is a self-contained page (the Vega / Vega-Lite / vega-embed bundle inlined from vl-convert, so
it opens offline), .json the Vega-Lite spec with its data inlined, .svg / .png / .pdf are rendered by
vl-convert. Files are written atomically: a reader never sees half a chart. Altair and vl-convert
are imported on use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import html
import json
import os
from pathlib import Path
from typing import Any, Optional

from gammadb.errors import InvalidSpecError

EXPORT_SUFFIXES = (".html", ".json", ".svg", ".png", ".pdf")
PNG_SCALE = 2  # pixels per CSS pixel: sharp on high-density screens and in slides


def chart_spec(chart: Any) -> dict[str, Any]:
    """The chart's Vega-Lite spec (a dict), data inlined. Altair's 5,000-row guard is lifted here:
    the chart builders keep their own row budget."""
    import altair as alt

    with alt.data_transformers.disable_max_rows():
        return chart.to_dict()


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script, from vl-convert (no network; ~4 s, so cached)."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())


def script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def chart_html(chart: Any, title: str = "gammadb chart") -> str:
    """A self-contained page for one chart: the Vega bundle inlined, so it opens offline."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><script type='text/javascript'>{vega_bundle()}</script></head>"
        "<body><div id='vis'></div><script type='text/javascript'>"
        f"vegaEmbed('#vis', {script_json(chart_spec(chart))}, {{renderer: 'svg'}})"
        ".catch(err => { document.getElementById('vis').textContent = 'chart failed to render: ' + err; });"
        "</script></body></html>\n"
    )


def check_chart_path(path: Path | str, option: Optional[str] = None) -> Path:
    """``path`` as a Path, or InvalidSpecError when no chart can be written there (an unknown suffix,
    a missing directory). ``option`` names the CLI option in the message (e.g. "--chart")."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        where = f"{option} {path}" if option else str(path)
        raise InvalidSpecError(f"{where}: charts export as html, json, svg, png or pdf: "
                               f"use one of {', '.join(EXPORT_SUFFIXES)}")
    if path.parent and not path.parent.exists():
        raise InvalidSpecError(f"directory {path.parent} does not exist")
    return path


def save_chart(chart: Any, path: Path | str, option: Optional[str] = None) -> Path:
    """Export ``chart`` by the suffix of ``path`` (see the module docstring); returns the path."""
    path = check_chart_path(path, option)
    suffix = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if suffix == ".html":
            tmp.write_text(chart_html(chart), encoding="utf-8")
        else:
            import altair as alt

            with alt.data_transformers.disable_max_rows():
                if suffix == ".png":
                    chart.save(str(tmp), format="png", scale_factor=PNG_SCALE)
                else:
                    chart.save(str(tmp), format=suffix[1:])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
