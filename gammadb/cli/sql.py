"""gammadb sql: ad-hoc SQL, read-only unless --write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gammadb.cli.common import Format, FormatOpt, OutOpt, UrlOpt, emit
from gammadb.errors import InvalidSpecError, NotFoundError


def sql(query: Annotated[Optional[str], typer.Argument(
            help="One SQL statement (it may start with a -- comment); - reads it from standard input.",
            show_default=False)] = None,
        file: Annotated[Optional[Path], typer.Option(
            "--file", help="Read the statement from this file (comments and a final ; are fine).",
            show_default=False)] = None,
        url: UrlOpt = None, fmt: FormatOpt = Format.table, out: OutOpt = None,
        write: Annotated[bool, typer.Option("--write", help="Allow statements that modify the store.")] = False) -> None:
    """Run one SQL statement, given as an argument, with --file F or on standard input (-); the store
    is opened read-only unless --write is given. On PostgreSQL, people who should only read get a role
    of their own: `gammadb db reader-role NAME`.

    Example: gammadb sql "SELECT gamma, eta, final_loss FROM run_overview WHERE sweep = 'quick'"
    (or: gammadb sql --file best.sql; gammadb sql - < best.sql)
    """
    from gammadb.sqlexec import run_sql
    from gammadb.store import Store

    text = _statement(query, file)
    with Store.open(url, create=False) as store:
        emit(run_sql(store, text, write=write), fmt, out)


def _statement(query: Optional[str], file: Optional[Path]) -> str:
    if (query is None) == (file is None):
        raise InvalidSpecError("give the statement as an argument, with --file FILE, or as - to read standard input")
    if file is not None:
        try:
            return file.read_text()
        except FileNotFoundError:
            raise NotFoundError(f"no such SQL file: {file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSpecError(f"cannot read SQL file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if query == "-":
        return sys.stdin.read()
    return query
