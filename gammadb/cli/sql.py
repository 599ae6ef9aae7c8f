"""gammadb sql: ad-hoc SQL, read-only unless --write."""

from __future__ import annotations

from typing import Annotated

import typer

from gammadb.cli.common import Format, FormatOpt, OutOpt, UrlOpt, emit


def sql(query: Annotated[str, typer.Argument(help="One SQL statement.")],
        url: UrlOpt = None, fmt: FormatOpt = Format.table, out: OutOpt = None,
        write: Annotated[bool, typer.Option("--write", help="Allow statements that modify the store.")] = False) -> None:
    """Run one SQL statement; the store is opened read-only unless --write is given. On PostgreSQL,
    people who should only read get a role of their own: `gammadb db reader-role NAME`.

    Example: gammadb sql "SELECT gamma, eta, final_loss FROM run_overview WHERE sweep = 'quick'"
    """
    from gammadb.sqlexec import run_sql
    from gammadb.store import Store

    with Store.open(url) as store:
        emit(run_sql(store, query, write=write), fmt, out)
