"""gammadb import / export: runs produced elsewhere in, one long table out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gammadb.cli.common import SweepOpt, UrlOpt, echo


def import_(file: Annotated[Path, typer.Argument(help="Parquet or CSV, one row per (run, step).")],
            sweep: SweepOpt, url: UrlOpt = None,
            replace: Annotated[bool, typer.Option(
                "--replace", help="Where the store holds another value at a run's step, the file wins.")] = False,
            ) -> None:
    """Import runs from a Parquet/CSV file: columns gamma, eta, seed, step, loss (+ run columns, metrics).

    All or nothing. A run is its hyper-parameters and seed: a file with later steps extends the runs,
    the same rows again change nothing, and a different value at a stored step is refused unless
    --replace.

    Example: gammadb import their_runs.parquet --sweep authors-mnist
    """
    from gammadb.store import Store
    from gammadb.transfer import import_file

    try:
        with Store.open(url) as store:
            rep = import_file(store, file, sweep, replace=replace)
    except KeyboardInterrupt:
        # The import is one transaction: an interrupt rolls all of it back (the generic message says
        # that what was logged is committed, which is true of training, not of an import).
        typer.echo("interrupted: the import was rolled back; the store is as it was", err=True)
        raise typer.Exit(130) from None
    echo(f"imported {rep.rows} rows into sweep {rep.sweep!r}: {rep.runs} runs ({rep.new_runs} new, "
         f"{rep.diverged} diverged), {rep.values} values of {', '.join(rep.metrics)}"
         + (f", {rep.replaced} replaced" if replace else ""))


def export(sweep: SweepOpt,
           out: Annotated[Path, typer.Option("--out", "-o", help="FILE.parquet or FILE.csv")],
           url: UrlOpt = None) -> None:
    """Export a sweep as one long table: run hyper-parameters joined to every per-step metric.

    Example: gammadb export --sweep quick --out quick.parquet
    """
    from gammadb.store import Store
    from gammadb.transfer import export_sweep

    with Store.open(url, create=False) as store:
        n = export_sweep(store, sweep, out)
    echo(f"wrote {out}: {n} rows")
