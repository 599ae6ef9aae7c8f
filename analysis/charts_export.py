"""Chart export, one way for every command and the report: a chart is saved by its file's suffix.

.html is a self-contained page (the Vega / Vega-Lite / vega-embed bundle inlined from vl-convert, so
it opens offline), .json the Vega-Lite spec with its data inlined, .svg / .png / .pdf are rendered by
vl-convert. Files are written atomically: a reader never sees half a chart. Altair and vl-convert
are imported on use, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from gammadb.errors import InvalidSpecError

EXPORT_SUFFIXES = (".html", ".json", ".svg", ".png", ".pdf")
PNG_SCALE = 2  # pixels per CSS pixel: sharp on high-density screens and in slides


def chart_spec(chart: Any) -> dict[str, Any]:
    """The chart's Vega-Lite spec (a dict), data inlined. Altair's 5,000-row guard is lifted here:
    the chart builders keep their own row budget. Not validated against the Vega-Lite schema here
    (0.1 s a chart; the report draws nine): every builder's tests do, through ``chart.to_dict()``."""
    import altair as alt

    with alt.data_transformers.disable_max_rows():
        return chart.to_dict(validate=False)


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script, from vl-convert (no network). Building it takes
    4-8 s, so it is kept on disk (:func:`bundle_cache_dir`) under the vl-convert and Vega-Lite versions
    and read back by every later process; in memory for the rest of this one."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    vl = vl_version_for_vl_convert()
    return cached_bundle(bundle_cache_dir(), f"vlc{vlc.__version__}-vl{vl}",
                         lambda: vlc.javascript_bundle(vl_version=vl))


def bundle_cache_dir() -> Optional[Path]:
    """``$XDG_CACHE_HOME/gammadb``, else ``~/.cache/gammadb``; None without a home directory."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if os.path.isabs(base):
        return Path(base) / "gammadb"
    try:
        return Path.home() / ".cache" / "gammadb"
    except RuntimeError:
        return None


_BUNDLE_HEAD = "// gammadb vega bundle sha256="


def cached_bundle(directory: Optional[Path], key: str, build: Callable[[], str]) -> str:
    """The text ``build()`` returns, kept in ``directory`` under ``key``: read back when its checksum
    holds (an empty, truncated or altered file is built again and replaced), written atomically (a
    temporary file, then os.replace: a concurrent reader sees the old file or the whole new one).
    A directory that cannot be read or written (or None) only costs the build: never an error."""
    if directory is None:
        return build()
    path = directory / f"vega-bundle-{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.js"
    try:
        head, sep, body = path.read_bytes().partition(b"\n")  # bytes: no newline translation
        if sep and head.decode("ascii") == _BUNDLE_HEAD + hashlib.sha256(body).hexdigest():
            return body.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = build()
    tmp: Optional[str] = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        body = text.encode("utf-8")
        with os.fdopen(fd, "wb") as f:
            f.write(f"{_BUNDLE_HEAD}{hashlib.sha256(body).hexdigest()}\n".encode("ascii") + body)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # a read-only home, a full disk: build it again next time
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return text


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
