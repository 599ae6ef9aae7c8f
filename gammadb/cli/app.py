"""The root Typer app: sub-apps per noun, top-level verbs."""

from __future__ import annotations

from typing import Annotated

import typer

from gammadb.cli import analyze, analyze_claims, analyze_curves, db, plot, report, run, runs, sql, transfer, ui
from gammadb.cli.common import new_app

app = new_app(
    "gammadb: an experiment database for SGD across feature-learning strength (gamma) and learning "
    "rate (eta). Store URL: --url, else $GAMMADB_URL, else ./gammadb.sqlite."
)


def _version(value: bool) -> None:
    if value:
        from gammadb import code_version

        typer.echo(f"gammadb {code_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print gammadb's version (and commit) and exit.")] = False,
          ) -> None:
    pass


app.add_typer(db.app, name="db")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(runs.sweeps_app, name="sweeps")
app.command("run")(run.run)
app.command("worker")(run.worker)
app.command("sql", context_settings={"ignore_unknown_options": True})(sql.sql)  # a statement may start with --
app.command("import")(transfer.import_)
app.command("export")(transfer.export)
app.command("report")(report.report)
app.command("ui")(ui.ui)
analyze.app.command("plateaus")(analyze_curves.plateaus)
analyze.app.command("collapse")(analyze_curves.collapse)
analyze.app.command("claims")(analyze_claims.claims)
app.add_typer(analyze.app, name="analyze")
app.add_typer(plot.app, name="plot")
