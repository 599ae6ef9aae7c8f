"""gammadb analyze plateaus / collapse: plain command functions, registered on the analyze app."""

from __future__ import annotations

import enum
from typing import Annotated, Optional

import typer

from gammadb.cli.common import JsonOpt, SweepOpt, UrlOpt, echo, emit, print_json


class Family(str, enum.Enum):
    fixed = "fixed"
    eta_star = "eta-star"
    eta_max = "eta-max"
    all = "all"


class Measure(str, enum.Enum):
    escape = "escape"
    plateau_end = "plateau-end"


class Transform(str, enum.Enum):
    auto = "auto"
    log = "log"
    linear = "linear"


WhereOpt = Annotated[Optional[list[str]], typer.Option(
    "--where", "-w", help="Run filter 'column op value' (repeatable, ANDed), e.g. \"depth = 3\".")]
RunOpt = Annotated[Optional[list[int]], typer.Option("--run", "-r", help="Only these run ids (repeatable).")]
EtaOpt = Annotated[Optional[float], typer.Option(
    "--eta", help="With --family fixed: this eta (default: the eta shared by the most gammas).")]
AlongEtaOpt = Annotated[Optional[float], typer.Option(
    "--eta", help="With --along fixed: this eta (default: the eta shared by the most gammas).")]
GammaMinOpt = Annotated[float, typer.Option(
    "--gamma-min", help="Only gamma >= this (the rich regime, where the theory applies); 0 for all.")]


def plateaus(
    sweep: SweepOpt,
    run: RunOpt = None,
    where: WhereOpt = None,
    along: Annotated[Family, typer.Option(
        "--along", help="Plateau-length scaling along eta*(gamma), eta_max(gamma), at a fixed eta, or over all runs.")] = Family.eta_star,
    eta: AlongEtaOpt = None,
    gamma_min: GammaMinOpt = 1.0,
    measure: Annotated[Measure, typer.Option(
        "--measure", help="Plateau length: the escape step (half-way down) or the first drop's start.")] = Measure.escape,
    bandwidth: Annotated[float, typer.Option(help="Gaussian smoother width, decades of step.")] = 0.05,
    min_samples: Annotated[int, typer.Option(help="Widen the smoother until it averages this many steps.")] = 16,
    min_slope: Annotated[float, typer.Option(help="A drop is steeper than t^-MIN_SLOPE somewhere.")] = 1.0,
    edge_slope: Annotated[float, typer.Option(help="A drop extends while steeper than t^-EDGE_SLOPE.")] = 0.25,
    min_drop: Annotated[float, typer.Option(help="A drop takes the loss this many decades below its past.")] = 0.2,
    per_decade: Annotated[int, typer.Option(help="Log-step buckets per decade read from the store.")] = 40,
    json_: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Find each run's initial plateau, escape step and staircase drops; fit plateau length vs gamma.

    Works on a smoothed log loss in log time (see analysis/plateaus.py for the method and defaults).

    Example: gammadb analyze plateaus --sweep quick --json
    """
    from gammadb.analysis.plateaus import PlateauOptions, analyze_plateaus
    from gammadb.store import Store

    opts = PlateauOptions(per_decade=per_decade, bandwidth=bandwidth, min_samples=min_samples,
                          min_slope=min_slope, edge_slope=edge_slope, min_drop=min_drop)
    with Store.open(url, create=False) as store:
        rep = analyze_plateaus(store, sweep, run, opts=opts, along=along.value.replace("-", "_"), eta=eta,
                               gamma_min=gamma_min or None, where=where or (),
                               measure="escape_step" if measure == Measure.escape else "plateau_end_step")
    if json_:
        print_json(rep.to_json())
        return
    import polars as pl

    drops = (rep.drops.group_by("run_id").agg(
        pl.format("{}({}→{})", pl.col("step"), pl.col("loss_before").round_sig_figs(3),
                  pl.col("loss_after").round_sig_figs(3)).str.join(" ").alias("drops")))
    table = rep.runs.join(drops, on="run_id", how="left").select(
        "run_id", "gamma", "eta", "seed", "status", "plateau_end_step", "escape_step", "n_drops",
        pl.col("drops").fill_null(""))
    emit(table, title=f"plateaus of sweep {sweep}")
    _echo_notes(rep.runs)
    for g in rep.scaling["groups"]:
        echo(_scaling_line(g, rep.scaling))


def _echo_notes(runs, limit: int = 40) -> None:
    odd = runs.filter(~runs["status"].is_in(["ok"]))
    for r in odd.head(limit).iter_rows(named=True):
        echo(f"run {r['run_id']}: {r['status']}: {r['note']}")
    if odd.height > limit:
        echo(f"... and {odd.height - limit} more runs without a drop or with a short curve (see --json)")


def _scaling_line(g: dict, scaling: dict) -> str:
    grp = ", ".join(f"{k}={v}" for k, v in g["group"].items())
    head = f"plateau length ({scaling['measure']}) vs gamma along {scaling['along']}" + (f" [{grp}]" if grp else "")
    theory = f"; theory 1-2/L = {g['theory_exponent']:.3f} (L={g['depth']})" if g["theory_exponent"] is not None else ""
    if g["exponent"] is None:
        return f"{head}: no fit: {g['reason']}"
    ci = g["exponent_ci"]
    ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)"
    return (f"{head}: exponent {g['exponent']:.3f}{ci_txt}, R^2 {g['r2']:.3f}, {g['n_points']} runs, "
            f"{g['n_censored']} never escaped{theory}")


def collapse(
    sweep: SweepOpt,
    metric: Annotated[str, typer.Option("--metric", "-m", help="loss, or any metric: NAME or NAME.lK (layer K).")] = "loss",
    family: Annotated[Family, typer.Option(
        "--family", help="Runs compared: one eta (fixed), each gamma at its eta* or eta_max, or all.")] = Family.fixed,
    eta: EtaOpt = None,
    gamma_min: GammaMinOpt = 1.0,
    reference: Annotated[Optional[int], typer.Option(
        "--reference", help="Reference run id (default: the run nearest the median gamma).")] = None,
    run: RunOpt = None,
    where: WhereOpt = None,
    transform: Annotated[Transform, typer.Option(
        help="Compare log10 values (auto: when all are > 0) or the values themselves.")] = Transform.auto,
    levels: Annotated[int, typer.Option(help="Levels matched when fitting each run's time scale.")] = 25,
    tau_max: Annotated[Optional[float], typer.Option(
        "--tau-max", help="Compare and fit only up to this tau = eta t / gamma (early times).")] = None,
    per_decade: Annotated[int, typer.Option(help="Log-step buckets per decade read from the store.")] = 40,
    json_: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Test the collapse of runs at different gamma under tau = eta t / gamma, and fit the time scale.

    Reports the RMS distance to a reference curve before and after rescaling, each run's fitted time
    scale s (L_run(t) ~ L_ref(s t)) and a power-law fit of s vs gamma (and eta) beside theory (-1, +1).

    Example: gammadb analyze collapse --sweep quick --family fixed --eta 0.1 --json
    """
    from gammadb.analysis.collapse import CollapseOptions, analyze_collapse
    from gammadb.store import Store

    opts = CollapseOptions(per_decade=per_decade, levels=levels, transform=transform.value, tau_max=tau_max)
    with Store.open(url, create=False) as store:
        rep = analyze_collapse(store, sweep, metric=metric, along=family.value.replace("-", "_"), eta=eta,
                               gamma_min=gamma_min or None, reference=reference, run_ids=run,
                               where=where or (), opts=opts)
    if json_:
        print_json(rep.to_json())
        return
    emit(rep.runs.drop("note"), title=f"collapse of {rep.to_json()['metric']} in sweep {sweep}")
    for r in rep.runs.filter(rep.runs["note"] != "").iter_rows(named=True):
        if r["status"] != "reference":
            echo(f"run {r['run_id']}: {r['note']}")
    ref = rep.reference
    echo(f"reference: run {ref['run_id']} (gamma={ref['gamma']:g}, eta={ref['eta']:g}); family {rep.family['along']}"
         + (f" at eta={rep.family['eta']:g}" if rep.family.get("eta") is not None else "")
         + (f"; other groups left out: {rep.family['other_groups']}" if rep.family.get("other_groups") else ""))
    echo(f"RMS distance to the reference ({rep.transform} {rep.to_json()['metric']}): before {_f(rep.rms_before)}, "
         f"after tau = eta t/gamma {_f(rep.rms_after_theory)}, after fitted time scales {_f(rep.rms_after_fit)}")
    f = rep.fit
    if f["exponent_gamma"] is None:
        echo(f"time-scale fit: none: {f['note']}")
    else:
        line = f"time scale s ~ gamma^{f['exponent_gamma']:.3f}{_ci(f['exponent_gamma_ci'])}"
        if f["exponent_eta"] is not None:
            line += f" eta^{f['exponent_eta']:.3f}{_ci(f['exponent_eta_ci'])}"
        line += f" (theory gamma^-1 eta^1; R^2 {f['r2']:.3f}, {f['n_runs']} runs)"
        if f["note"]:
            line += f"; {f['note']}"
        echo(line)


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _ci(ci: Optional[list[float]]) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
