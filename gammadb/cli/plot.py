"""gammadb plot: loss curves, trajectory collapse and per-step metrics as Altair charts."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from gammadb.analysis.charts_export import check_chart_path, save_chart
from gammadb.cli.analyze_curves import EtaOpt, Family, GammaMinOpt, RunOpt
from gammadb.cli.common import SweepOpt, UrlOpt, echo, new_app

app = new_app("Charts of loss curves, trajectory collapse and per-step metrics (html, json, svg, png, pdf).")


class XAxis(str, enum.Enum):
    step = "step"
    tau = "tau"


class Facet(str, enum.Enum):
    gamma = "gamma"
    eta = "eta"


OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Chart file: .html (self-contained), .json (spec), .svg, .png or .pdf.")]


WhereOpt = Annotated[Optional[list[str]], typer.Option(
    "--where", "-w", help="Run filter 'column op value' (repeatable, ANDed), e.g. \"gamma > 10\".")]
MetricOpt = Annotated[str, typer.Option("--metric", "-m", help="NAME or NAME.lK (layer K).")]
PerDecadeOpt = Annotated[int, typer.Option(help="Log-step buckets per decade (min and max kept in each).")]
MaxRowsOpt = Annotated[int, typer.Option(help="Most rows handed to the chart (fewer buckets beyond).")]
DivergedOpt = Annotated[bool, typer.Option(
    "--include-diverged", help="Also draw diverged runs (left out by default: their loss runs to 1e35).")]


@app.command("curves")
def curves(sweep: SweepOpt, out: OutOpt = Path("curves.html"), metric: MetricOpt = "loss",
           where: WhereOpt = None, run: RunOpt = None,
           x: Annotated[XAxis, typer.Option("--x", help="Time axis: step, or tau = eta step / gamma.")] = XAxis.step,
           marks: Annotated[bool, typer.Option(help="Mark detected plateaus and drops (loss only).")] = True,
           per_decade: PerDecadeOpt = 40, max_rows: MaxRowsOpt = 20_000, include_diverged: DivergedOpt = False,
           url: UrlOpt = None) -> None:
    """Loss (or metric) curves on log-log axes: colour by gamma (log scale), seed mean with a min/max
    band; diverged runs are left out (and counted in the subtitle) unless --include-diverged.

    Example: gammadb plot curves --sweep quick --where "gamma >= 10" --x tau --out curves.html
    """
    from gammadb.analysis.charts_curves import curves_figure
    from gammadb.store import Store

    check_chart_path(out, "--out")
    with Store.open(url, create=False) as store:
        chart, info = curves_figure(store, sweep, metric=metric, where=where or (), run_ids=run, x=x.value,
                                    marks=marks, per_decade=per_decade, max_rows=max_rows,
                                    include_diverged=include_diverged)
    save_chart(chart, out, "--out")
    echo(f"wrote {out}: {info['curves']} curves from {info['runs']} runs, {info['rows']} points, "
         f"{info['marks']} plateau/drop marks" + _left_out(info["left_out"]))


@app.command("collapse")
def collapse(sweep: SweepOpt, out: OutOpt = Path("collapse.html"), metric: MetricOpt = "loss",
             family: Annotated[Family, typer.Option("--family", help="fixed | eta-star | eta-max | all")] = Family.fixed,
             eta: EtaOpt = None, gamma_min: GammaMinOpt = 1.0,
             reference: Annotated[Optional[int], typer.Option("--reference", help="Reference run id.")] = None,
             tau_max: Annotated[Optional[float], typer.Option(
                 "--tau-max", help="Fit the time scales only up to this tau of the reference.")] = None,
             where: WhereOpt = None, run: RunOpt = None, url: UrlOpt = None) -> None:
    """Raw time, tau = eta t / gamma and the fitted time scale side by side (see analyze collapse).

    Example: gammadb plot collapse --sweep quick --eta 0.1 --out collapse.png
    """
    from gammadb.analysis.charts_curves import collapse_figure
    from gammadb.analysis.collapse import CollapseOptions, analyze_collapse
    from gammadb.store import Store

    check_chart_path(out, "--out")
    with Store.open(url, create=False) as store:
        rep = analyze_collapse(store, sweep, metric=metric, along=family.value.replace("-", "_"), eta=eta,
                               gamma_min=gamma_min or None, reference=reference, run_ids=run, where=where or (),
                               opts=CollapseOptions(tau_max=tau_max))
    save_chart(collapse_figure(rep), out, "--out")
    echo(f"wrote {out}: {rep.runs.height} runs; RMS before {_f(rep.rms_before)}, after tau {_f(rep.rms_after_theory)}, "
         f"after fit {_f(rep.rms_after_fit)}")


@app.command("metric")
def metric(sweep: SweepOpt, metric: MetricOpt, out: OutOpt = Path("metric.html"),
           facet: Annotated[Facet, typer.Option("--facet", help="One panel per gamma or per eta.")] = Facet.gamma,
           x: Annotated[XAxis, typer.Option("--x", help="Time axis: step or tau.")] = XAxis.step,
           where: WhereOpt = None, run: RunOpt = None,
           edge: Annotated[Optional[bool], typer.Option(
               "--edge/--no-edge", help="Draw the 2/eta line (default: for sharpness).")] = None,
           per_decade: PerDecadeOpt = 40, max_rows: MaxRowsOpt = 20_000, include_diverged: DivergedOpt = False,
           url: UrlOpt = None) -> None:
    """Any per-step metric against step or tau, faceted by gamma or eta (all layers unless NAME.lK).

    Example: gammadb plot metric --sweep quick --metric weight_change --facet gamma --out wc.svg
    """
    from gammadb.analysis.charts_curves import metric_figure
    from gammadb.store import Store

    check_chart_path(out, "--out")
    with Store.open(url, create=False) as store:
        chart, info = metric_figure(store, sweep, metric=metric, facet=facet.value, x=x.value, where=where or (),
                                    run_ids=run, two_over_eta=edge, per_decade=per_decade, max_rows=max_rows,
                                    include_diverged=include_diverged)
    save_chart(chart, out, "--out")
    echo(f"wrote {out}: {info['panels']} panels, layers {info['layers']}, {info['rows']} points from {info['runs']} runs"
         + _left_out(info["left_out"]))


@app.command("lr-curve")
def lr_curve(sweep: SweepOpt, out: OutOpt = Path("lr-curve.html"),
             budget: Annotated[Optional[int], typer.Option(
                 "--budget", help="Step at which the loss is read (default: the last step every "
                                  "non-diverged run reached).")] = None,
             url: UrlOpt = None) -> None:
    """The learning-rate U-curve: loss at the budget against eta (log-log), one line per gamma
    (log colour scale), seed mean with a min..max band, diverged etas marked x along the top.

    Example: gammadb plot lr-curve --sweep quick --budget 10000 --out lr.png
    """
    from gammadb.analysis.charts_lr import lr_curve_figure
    from gammadb.store import Store

    check_chart_path(out, "--out")
    with Store.open(url, create=False) as store:
        chart, info = lr_curve_figure(store, sweep, budget=budget)
    save_chart(chart, out, "--out")
    echo(f"wrote {out}: {info['curves']} gamma curves over {info['etas']} etas at step {info['budget_step']}, "
         f"{info['diverged_cells']} diverged (gamma, eta) cells marked")


def _left_out(n: int) -> str:
    return f"; {n} diverged runs left out (--include-diverged to show)" if n else ""


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4g}"
