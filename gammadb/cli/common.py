"""Shared option types, the output helper and the error-to-exit-code mapping."""

from __future__ import annotations

import enum
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import polars as pl
import typer
from typer.core import TyperGroup

from gammadb.errors import GammadbError
from gammadb.urls import mask

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
    """Print or save a frame as a rich table, CSV, JSON (records) or Parquet."""
    if fmt == Format.parquet:
        if out is None:
            raise GammadbError("--format parquet needs --out FILE")
        df.write_parquet(out)
        return
    if fmt == Format.csv:
        text = df.write_csv()
    elif fmt == Format.json:
        text = json.dumps(_jsonable(df.to_dicts()), default=str)
    else:
        text = _rich_table(df, title)
    if out is not None:
        out.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


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


def _rich_table(df: pl.DataFrame, title: str | None) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in df.columns:
        table.add_column(c, justify="right" if df.schema[c].is_numeric() else "left")
    for row in df.iter_rows():
        table.add_row(*(_fmt(v) for v in row))
    buf = io.StringIO()
    Console(file=buf, width=max(80, min(250, 14 * len(df.columns))), force_terminal=False).print(table)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def echo(text: str) -> None:
    typer.echo(text)
