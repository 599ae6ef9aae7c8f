"""gammadb analyze claims: the paper's claims held against one sweep (a plain command function,
registered on the analyze app)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gammadb.cli.common import JsonOpt, SweepOpt, UrlOpt, echo, emit, print_json


def claims(
    sweep: SweepOpt,
    url: UrlOpt = None,
    budget: Annotated[Optional[int], typer.Option(
        "--budget", help="Step at which eta* and eta_max are judged (default: the last step every non-diverged "
                         "run reached).", show_default=False)] = None,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", help="Widen each measured interval by this much before asking whether it holds the "
                            "theory value (docs/theory.md: 0.15 for exponents from half-decade grids).")] = 0.15,
    gamma_min: Annotated[float, typer.Option(
        "--gamma-min", help="The plateau and collapse claims look at gamma >= this.")] = 1.0,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap replicates for the intervals.")] = 1000,
    json_: JsonOpt = False,
) -> None:
    """Hold the paper's claims against a sweep: per claim (eta* and eta_max exponents at small and large
    gamma, plateau length vs gamma, collapse under tau = eta t / gamma, best loss at gamma >= 1) the
    theory value, the measured value with its interval, and a verdict: consistent, inconsistent or
    not testable here (with why, and a `gammadb run` command that adds what is missing).

    Example: gammadb analyze claims --sweep quick --json
    """
    from gammadb.analysis.claims import verdict
    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        rep = verdict(store, sweep, budget=budget, tolerance=tolerance, n_boot=n_boot, gamma_min=gamma_min)
    if json_:
        print_json(rep.to_json())
        return
    budget_txt = f", budget step {rep.budget_step}" if rep.budget_step is not None else ""
    emit(rep.table(), title=f"the paper's claims against sweep {sweep}{budget_txt}")
    for line in rep.lines():
        echo(line)
    echo(f"rule: {rep.rule}")
