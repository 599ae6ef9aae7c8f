"""gammadb analyze: the paper's analyses of a sweep (each command parses options, calls one analysis
function, prints a table or one JSON object, and optionally saves a chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gammadb.analysis.charts_export import check_chart_path, save_chart
from gammadb.analysis.thresholds import CONVERGED, LEFT_PLATEAU
from gammadb.cli.common import JsonOpt, SweepOpt, UrlOpt, emit, new_app, print_json, wrote
from gammadb.errors import InvalidSpecError

app = new_app("Analyse sweeps: optimal learning rates, power-law fits, phase portraits.")

BudgetOpt = Annotated[Optional[int], typer.Option(
    "--budget", help="Step at which runs are compared (default: the last step every non-diverged run reached).",
    show_default=False)]
ThresholdOpt = Annotated[float, typer.Option(
    "--threshold", help="A run left the initial plateau when its loss at the budget is below this fraction "
                        "of its initial loss.")]
ChartOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Save the chart: .html (self-contained), .json (Vega-Lite), .svg, .png or .pdf.",
    show_default=False)]
# the flag's former name, still accepted (every command that writes a file now calls it --out)
ChartAliasOpt = Annotated[Optional[Path], typer.Option("--chart", hidden=True, show_default=False)]


def _chart_path(out: Optional[Path], chart: Optional[Path]) -> Optional[Path]:
    """The chart file of --out (or its old name --chart), refused before the analysis runs, not after."""
    if out is not None and chart is not None and out != chart:
        raise InvalidSpecError("give the chart file once, with --out (--chart is its old name)")
    path = out or chart
    if path is not None:
        check_chart_path(path, "--out")
    return path


def _save(chart, path: Path, json_: bool) -> None:
    save_chart(chart, path, "--out")
    wrote(path, err=json_)  # with --json, stdout holds exactly one JSON object


def _print_tables(tables: list) -> None:
    for title, frame in tables:
        emit(frame, title=title)


@app.command("optimal-lr")
def optimal_lr(
    sweep: SweepOpt,
    url: UrlOpt = None,
    budget: BudgetOpt = None,
    criterion: Annotated[str, typer.Option(
        "--criterion", help="Loss that eta* minimises: final | tail-mean (last 10% of steps before the "
                            "budget) | min | test (the paper's: test loss at the last evaluation).")] = "tail-mean",
    converged: Annotated[float, typer.Option(
        "--converged", help="eta_max: the largest eta whose loss at the budget is at most this fraction of "
                            "the initial loss, with no seed diverged.")] = CONVERGED,
    threshold: ThresholdOpt = LEFT_PLATEAU,
    small_max: Annotated[float, typer.Option("--small-max", help="Small-gamma fit: gamma <= this.")] = 0.1,
    large_min: Annotated[float, typer.Option("--large-min", help="Large-gamma fit: gamma >= this.")] = 10.0,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the intervals.")] = 1000,
    json_: JsonOpt = False,
    out: ChartOpt = None,
    chart: ChartAliasOpt = None,
) -> None:
    """Locate eta*, eta_max, eta_stable and eta_min per gamma, and fit their power laws in gamma
    (small side vs theory 2, large side vs 2/L), with bootstrap intervals over seeds.

    Example: gammadb analyze optimal-lr --sweep quick --json --out quick-lr.html
    """
    from gammadb.analysis import optimal_lr as olr
    from gammadb.analysis._common import Criterion
    from gammadb.store import Store

    try:
        crit = Criterion(criterion)
    except ValueError:
        raise InvalidSpecError(
            f"--criterion {criterion!r}: use one of {', '.join(c.value for c in Criterion)}") from None
    chart = _chart_path(out, chart)
    settings = olr.Settings(criterion=crit, converged=converged, threshold=threshold, small_max=small_max,
                            large_min=large_min, n_boot=n_boot)
    with Store.open(url, create=False) as store:
        result = olr.analyze(store, sweep, budget=budget, settings=settings)
    if json_:
        print_json(result.to_json())
    else:
        _print_tables(olr.report_tables(result))
    if chart is not None:
        from gammadb.analysis.charts_lr import optimal_lr_chart

        _save(optimal_lr_chart(result), chart, json_)


@app.command("fit")
def fit(
    x: Annotated[str, typer.Option("--x", help="Column for x.")],
    y: Annotated[str, typer.Option("--y", help="Column for y.")],
    sql: Annotated[Optional[str], typer.Option(
        "--sql", help="A read-only query whose result holds the columns.", show_default=False)] = None,
    sweep: Annotated[Optional[str], typer.Option(
        "--sweep", "-s", help="Instead of --sql: the sweep's run table (run_overview columns).",
        show_default=False)] = None,
    xmin: Annotated[Optional[float], typer.Option("--xmin", help="Only rows with x >= this.", show_default=False)] = None,
    xmax: Annotated[Optional[float], typer.Option("--xmax", help="Only rows with x <= this.", show_default=False)] = None,
    url: UrlOpt = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the interval.")] = 1000,
    json_: JsonOpt = False,
) -> None:
    """Fit y = A x^k (least squares in log-log, bootstrap interval, R^2 in log space) and the offset
    law y = a x^-alpha + c to two columns of a query or of a sweep's runs.

    Example: gammadb analyze fit --sql "SELECT gamma, MIN(final_loss) AS best FROM run_overview GROUP BY gamma" --x gamma --y best
    """
    from gammadb.analysis.fits import fit_columns
    from gammadb.store import Store

    if (sql is None) == (sweep is None):
        raise InvalidSpecError("give exactly one of --sql QUERY or --sweep NAME")
    if n_boot < 10:
        raise InvalidSpecError(f"--n-boot must be at least 10, got {n_boot}")
    with Store.open(url, create=False) as store:
        if sql is not None:
            from gammadb.sqlexec import run_sql

            df = run_sql(store, sql)
        else:
            df = store.runs_frame(sweep)
    result = fit_columns(df, x, y, xmin=xmin, xmax=xmax, n_boot=n_boot)
    if json_:
        print_json({"source": sql if sql is not None else f"sweep {sweep}", **result.to_json()})
    else:
        emit(result.table(), title=f"{y} against {x}: {result.n_rows} rows, {result.n_dropped} dropped "
                                   "(missing, non-finite or <= 0)")


@app.command("phase")
def phase(
    sweep: SweepOpt,
    url: UrlOpt = None,
    budget: BudgetOpt = None,
    threshold: ThresholdOpt = LEFT_PLATEAU,
    spike: Annotated[float, typer.Option(
        "--spike", help="Catapult: the loss rose above this factor times its initial value, then fell below "
                        "the initial value.")] = 2.0,
    json_: JsonOpt = False,
    out: ChartOpt = None,
    chart: ChartAliasOpt = None,
) -> None:
    """Classify every (gamma, eta) cell as diverged, trained, under-trained or catapult; report the
    trainable band's edges and width (decades) per gamma, and the gamma where it closes.

    Example: gammadb analyze phase --sweep quick --out phases.png
    """
    from gammadb.analysis import phase as ph
    from gammadb.store import Store

    chart = _chart_path(out, chart)
    with Store.open(url, create=False) as store:
        result = ph.analyze(store, sweep, budget=budget, threshold=threshold, spike=spike)
    if json_:
        print_json(result.to_json())
    else:
        _print_tables(ph.report_tables(result))
    if chart is not None:
        from gammadb.analysis.charts_lr import phase_chart

        _save(phase_chart(result), chart, json_)
