"""Chart export, one way for every command and the report: a chart is saved by its file's suffix.

.html is a self-contained page (the Vega / Vega-Lite / vega-embed bundle inlined from vl-convert, so
it opens offline), .json the Vega-Lite spec with its data inlined, .svg / .png / .pdf are rendered by
vl-convert. Files are written atomically: a reader never sees half a chart. Altair and vl-convert
are imported on use, so importing this module costs nothing.

Every export starts from :func:`chart_json`: Altair writes the spec with each polars frame replaced by
a named dataset, and the rows are written by polars straight to JSON text and spliced in under the
spec's ``datasets``. Altair's own path turns every row into a dict, hashes the lot through
``json.dumps`` and deep-copies it: 0.3-0.4 s for the ~17,000 rows of a 500-run sweep's curves chart,
where this takes 0.04 s (and the page or file gets the same spec, up to the datasets' names).
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
import threading
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional

from gammadb.errors import InvalidSpecError

EXPORT_SUFFIXES = (".html", ".json", ".svg", ".png", ".pdf")
PNG_SCALE = 2  # pixels per CSS pixel: sharp on high-density screens and in slides


def chart_spec(chart: Any) -> dict[str, Any]:
    """The chart's Vega-Lite spec (a dict), data inlined: :func:`chart_json`, parsed."""
    return json.loads(chart_json(chart))


def chart_json(chart: Any) -> str:
    """The chart's Vega-Lite spec as JSON text, data inlined under ``datasets`` (one dataset per
    distinct frame, named by a hash of its rows, as Altair names them). The chart is not changed.

    Polars frames are written by polars (NaN and inf become null: the text is strict JSON); any other
    data (``alt.Data(values=...)``, pandas, a URL) goes Altair's way. Altair's 5,000-row guard does not
    apply: the chart builders keep their own row budget. Not validated against the Vega-Lite schema
    (0.1 s a chart; the report draws nine): every builder's tests do, through ``chart.to_dict()``.
    """
    import altair as alt

    alt.data_transformers.register(_TRANSFORMER, _named_data)  # a dict entry (names() would read entry points)
    frames = _Frames()
    token = _COLLECTING.set(frames)
    try:
        # Altair's transformer is global state: one chart at a time, and the frames are collected
        # per thread, so a to_dict() elsewhere meanwhile gets Altair's default (see _named_data)
        with _LOCK, alt.data_transformers.enable(_TRANSFORMER):
            spec = chart.to_dict(validate=False)
    finally:
        _COLLECTING.reset(token)
    return _splice(spec, frames.texts)


_TRANSFORMER = "gammadb-named"
_LOCK = threading.Lock()
_COLLECTING: ContextVar[Optional["_Frames"]] = ContextVar("gammadb_chart_frames", default=None)


class _Frames:
    """The polars frames met while one chart becomes a spec: each written once, by name."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}  # dataset name -> its rows as JSON text
        self._seen: dict[int, tuple[Any, str]] = {}  # id(frame) -> (frame, name): layers share frames

    def name(self, df: Any) -> Optional[str]:
        """The dataset name of ``df``, or None when it holds a column polars cannot write as Altair would."""
        hit = self._seen.get(id(df))
        if hit is not None:
            return hit[1]
        text = _rows_json(df)
        if text is None:
            return None
        name = "data-" + hashlib.sha256(text.encode()).hexdigest()[:32]
        self.texts.setdefault(name, text)  # equal rows, one dataset
        self._seen[id(df)] = (df, name)  # the frame is kept, so its id is not reused meanwhile
        return name


def _named_data(data: Any, max_rows: Optional[int] = 5000) -> dict[str, Any]:
    """The Altair data transformer of :func:`chart_json`: a polars frame becomes a named dataset;
    anything else is Altair's default (values, no row limit). Called from outside :func:`chart_json`
    (another thread's ``to_dict()`` meanwhile), it is Altair's default, row limit included."""
    import polars as pl
    from altair.vegalite.data import default_data_transformer

    frames = _COLLECTING.get()
    if frames is not None and isinstance(data, pl.DataFrame) and (name := frames.name(data)) is not None:
        return {"name": name}
    return default_data_transformer(data, max_rows=max_rows if frames is None else None)


def _rows_json(df: Any) -> Optional[str]:
    """The frame's rows as a JSON array of objects, the values Altair would write (dates and times as
    its ISO strings, float32 as the float64 it widens to, categoricals as strings); None when a column
    is of a type left to Altair (decimal, time, duration, nested, binary, object)."""
    import polars as pl

    casts, temporal = [], False
    for name, dtype in df.schema.items():
        if dtype.is_float():
            if dtype != pl.Float64:  # polars writes a float32 shortest; Altair, the float64 it widens to
                casts.append(pl.col(name).cast(pl.Float64))
        elif isinstance(dtype, (pl.Categorical, pl.Enum)):
            casts.append(pl.col(name).cast(pl.String))
        elif dtype == pl.Date or isinstance(dtype, pl.Datetime):
            temporal = True
        elif dtype not in _plain_dtypes():
            return None
    if temporal:
        import narwhals.stable.v1 as nw
        from altair.utils.core import sanitize_narwhals_dataframe

        df = nw.to_native(sanitize_narwhals_dataframe(nw.from_native(df, eager_only=True)))
    return (df.with_columns(casts) if casts else df).write_json()


@functools.lru_cache(maxsize=1)
def _plain_dtypes() -> frozenset[Any]:
    """The dtypes polars writes to JSON as Altair does (ints, strings, booleans, nulls; floats aside)."""
    import polars as pl

    return frozenset({pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
                      pl.String, pl.Boolean, pl.Null})


def _splice(spec: dict[str, Any], texts: dict[str, str]) -> str:
    """``spec`` as compact JSON with the datasets' texts spliced in under ``datasets`` (after any
    Altair put there itself)."""
    own = spec.pop("datasets", {})
    parts = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in own.items() if k not in texts]
    parts += [f"{json.dumps(k)}:{t}" for k, t in texts.items()]
    head = json.dumps(spec, separators=(",", ":"))
    if not parts:
        return head
    return f"{head[:-1]}{',' if spec else ''}\"datasets\":{{{','.join(parts)}}}}}"


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
    return script_safe(json.dumps(obj, separators=(",", ":")))


def script_safe(json_text: str) -> str:
    """JSON text made safe inside a <script> element: no ``</`` to end it (``<\\/`` reads the same)."""
    return json_text.replace("</", "<\\/")


def chart_html(chart: Any, title: str = "gammadb chart") -> str:
    """A self-contained page for one chart: the Vega bundle inlined, so it opens offline."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><script type='text/javascript'>{vega_bundle()}</script></head>"
        "<body><div id='vis'></div><script type='text/javascript'>"
        f"vegaEmbed('#vis', {script_safe(chart_json(chart))}, {{renderer: 'svg'}})"
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
        elif suffix == ".json":
            tmp.write_text(chart_json(chart), encoding="utf-8")
        else:
            tmp.write_bytes(render_chart(chart_json(chart), suffix[1:]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def render_chart(spec_json: str, fmt: str) -> bytes:
    """A Vega-Lite spec (JSON text) drawn by vl-convert as ``fmt`` (svg, png or pdf), with the
    Vega-Lite version Altair writes for; png at PNG_SCALE pixels per CSS pixel."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    vl = vl_version_for_vl_convert()
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec_json, vl_version=vl).encode("utf-8")
    if fmt == "png":
        return vlc.vegalite_to_png(spec_json, vl_version=vl, scale=PNG_SCALE, ppi=72)
    if fmt == "pdf":
        return vlc.vegalite_to_pdf(spec_json, vl_version=vl)
    raise ValueError(f"vl-convert draws svg, png or pdf, not {fmt!r}")
