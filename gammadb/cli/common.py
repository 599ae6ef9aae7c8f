"""Shared option types, the output helper and the error-to-exit-code mapping."""

from __future__ import annotations

import enum
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from gammadb.errors import GammadbError
from gammadb.urls import mask

if TYPE_CHECKING:  # polars is imported by the commands that use it: not at every command's start-up
    import polars as pl

UrlOpt = Annotated[
    Optional[str],
    typer.Option("--url", help="Store URL (default: $GAMMADB_URL, else sqlite:///gammadb.sqlite).",
                 show_default=False),
]
SweepOpt = Annotated[str, typer.Option("--sweep", "-s", help="Sweep name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")]


class Format(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to this file instead of stdout.")]


class GammadbGroup(TyperGroup):
    """Maps gammadb errors to one line on stderr and the error's exit code (traceback only with
    GAMMADB_DEBUG=1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GammadbError as exc:
            if os.environ.get("GAMMADB_DEBUG") == "1":
                raise
            typer.echo(f"error: {mask(str(exc))}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: everything logged so far is committed", err=True)
            raise typer.Exit(130) from None


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(cls=GammadbGroup, help=help_text, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode=None)


def emit(df: pl.DataFrame, fmt: Format = Format.table, out: Path | None = None, *, title: str | None = None) -> None:
    """Print or save a frame as a rich table, CSV, JSON (records) or Parquet; a saved file is written
    atomically and announced as ``wrote PATH``."""
    if fmt == Format.parquet:
        if out is None:
            raise GammadbError("--format parquet needs --out FILE")
        _atomic_write(out, df.write_parquet)
        echo(f"wrote {out}")
        return
    if fmt == Format.csv:
        text = df.write_csv()
    elif fmt == Format.json:
        text = json.dumps(_jsonable(df.to_dicts()), default=str)
    else:
        text = _rich_table(df, title, width=None if out is None else WIDE)
    if out is not None:
        _atomic_write(out, lambda tmp: Path(tmp).write_text(text))
        echo(f"wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _atomic_write(out: Path, write: Any) -> None:
    """``write(tmp)`` beside ``out``, then rename over it: a reader never sees half a file."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise GammadbError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def wrote(path: Path, detail: str = "", *, err: bool = False) -> None:
    """The one line every command that writes a file prints: ``wrote PATH[: detail]`` (on stderr
    when stdout carries a JSON object)."""
    typer.echo(f"wrote {path}" + (f": {detail}" if detail else ""), err=err)


def print_json(obj: Any) -> None:
    """Exactly one JSON object on stdout; NaN/inf become null (strict JSON)."""
    sys.stdout.write(json.dumps(_jsonable(obj), default=str) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


WIDE = 250  # table width when nothing says how wide the reader's terminal is (a file)
NOTE_CHARS = 32  # text cells longer than this move under the table as numbered notes
EMPTY = "-"


def terminal_width() -> int:
    """Columns of the reader's terminal: $COLUMNS, else the terminal's size, else 120 (a pipe)."""
    import shutil

    return max(40, shutil.get_terminal_size(fallback=(120, 24)).columns)


def _rich_table(df: pl.DataFrame, title: str | None, *, width: int | None = None) -> str:
    """The frame as a table no wider than ``width`` (default: the terminal): numbers fold inside
    their column, an empty cell reads "-", and long texts become numbered notes under the table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    width = width or terminal_width()
    notes: list[str] = []
    rows = []
    for row in df.iter_rows():
        cells = []
        for v in row:
            text = _fmt(v)
            if isinstance(v, str) and len(text) > NOTE_CHARS:
                if text not in notes:
                    notes.append(text)
                text = f"[{notes.index(text) + 1}]"
            cells.append(text)
        rows.append(cells)
    numeric = [df.schema[c].is_numeric() for c in df.columns]
    widths = _column_widths(df.columns, rows, numeric, width)
    table = Table(box=box.HEAVY_HEAD, padding=(0, 1))  # the title goes above, wrapped at the terminal, not the table
    for c, w, num in zip(df.columns, widths, numeric):
        table.add_column(c, justify="right" if num else "left", overflow="fold", width=w)
    for cells in rows:
        table.add_row(*cells)
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, no_color=True, highlight=False, markup=False)
    if title:
        console.print(title, overflow="fold")
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", overflow="fold", markup=False)
    return buf.getvalue()


FRAME = 3  # characters per column besides its text: a padding each side and a rule (plus one edge)


def _column_widths(header: list[str], rows: list[list[str]], numeric: list[bool], width: int) -> list[int]:
    """Column widths that sum (with the gaps) to at most ``width``: each column its natural width when
    all fit; else numbers keep their longest value (headers wrap) and texts share what is left in
    proportion to what they would want; on a terminal too narrow even for that, everything shrinks
    in proportion and folds."""
    want = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    room = width - FRAME * len(header) - 1
    if sum(want) <= room:
        return want
    floor = [max([min(len(header[i]), 4), *(len(r[i]) for r in rows)]) if num else min(want[i], 6)
             for i, num in enumerate(numeric)]
    if sum(floor) > room:
        return [max(1, f * room // sum(floor)) for f in floor]
    spare, extra = room - sum(floor), [w - f for w, f in zip(want, floor)]
    return [f + (e * spare // sum(extra) if sum(extra) else 0) for f, e in zip(floor, extra)]


def _fmt(v: Any) -> str:
    if v is None:
        return EMPTY
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    return text if text.strip() else EMPTY


def echo(text: str) -> None:
    typer.echo(text)
