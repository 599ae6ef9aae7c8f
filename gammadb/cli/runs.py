"""gammadb runs / sweeps: list and inspect what the store holds."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from gammadb.cli.common import Format, FormatOpt, OutOpt, UrlOpt, echo, emit, new_app

runs_app = new_app("List, inspect and requeue runs.")
sweeps_app = new_app("List and delete sweeps.")

LS_COLUMNS = ["run_id", "sweep", "model", "dataset", "loss_fn", "depth", "width", "batch_size",
              "gamma", "eta", "seed", "status", "steps_done", "steps_planned", "diverged_at",
              "final_loss", "min_loss"]
SHARED_COLUMNS = ["sweep", "model", "dataset", "loss_fn", "depth", "width", "batch_size", "steps_planned"]


@runs_app.command("ls")
def ls(url: UrlOpt = None,
       sweep: Annotated[Optional[str], typer.Option("--sweep", "-s", help="Only this sweep.")] = None,
       status: Annotated[Optional[str], typer.Option(
           help="pending | running | completed | diverged | failed")] = None,
       fmt: FormatOpt = Format.table, out: OutOpt = None) -> None:
    """List runs with their hyper-parameters, status and summary.

    Example: gammadb runs ls --sweep quick --status diverged --format csv
    """
    from gammadb.errors import InvalidSpecError
    from gammadb.records import RunStatus
    from gammadb.store import Store

    if status is not None and status not in {s.value for s in RunStatus}:
        raise InvalidSpecError(f"unknown status {status!r}: use one of {', '.join(s.value for s in RunStatus)}")
    with Store.open(url, create=False) as store:
        df = store.runs_frame(sweep=sweep, status=status)
    if fmt != Format.table:
        emit(df, fmt, out)
        return
    df = df.select([c for c in LS_COLUMNS if c in df.columns])
    # a terminal is narrow: what every listed run shares goes into the title, not into a column
    shared = [c for c in SHARED_COLUMNS if c in df.columns and df.height > 1 and df[c].n_unique() == 1]
    title = ", ".join(f"{c} {_cell(df[c][0])}" for c in shared) or None
    emit(df.drop(shared), fmt, out, title=title)


def _cell(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@runs_app.command("show")
def show(run_id: Annotated[int, typer.Argument(help="Run id (see `gammadb runs ls`).")],
         url: UrlOpt = None) -> None:
    """Show one run: its hyper-parameters, status, full config and summary.

    Example: gammadb runs show 12
    """
    import dataclasses

    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        run = store.get_run(run_id)
        summary = store.summaries([run_id]).get(run_id)
    doc = dataclasses.asdict(run)
    doc["status"] = run.status.value
    doc["summary"] = dataclasses.asdict(summary) if summary else None
    echo(json.dumps(doc, indent=2, default=str))


@runs_app.command("requeue")
def requeue(url: UrlOpt = None,
            sweep: Annotated[Optional[str], typer.Option("--sweep", "-s", help="Only this sweep.")] = None,
            stale: Annotated[bool, typer.Option("--stale", help="Requeue running runs whose heartbeat is old.")] = False,
            grace: Annotated[float, typer.Option(help="Seconds without a heartbeat before a run is stale.")] = 300.0,
            failed: Annotated[bool, typer.Option("--failed", help="Requeue failed runs.")] = False) -> None:
    """Put stale or failed runs back to pending (diverged runs are results and stay).

    Example: gammadb runs requeue --stale --grace 120 --failed
    """
    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        ids = store.requeue(sweep, stale_after_s=grace if stale else None, failed=failed)
    echo(f"requeued {len(ids)} runs" + (f": {', '.join(map(str, ids))}" if ids else ""))


@sweeps_app.command("ls")
def sweeps_ls(url: UrlOpt = None, fmt: FormatOpt = Format.table, out: OutOpt = None) -> None:
    """List sweeps with run counts by status.

    Example: gammadb sweeps ls --format json
    """
    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        emit(store.sweeps_frame(), fmt, out)


@sweeps_app.command("rm")
def sweeps_rm(name: Annotated[str, typer.Argument(help="Sweep name.")], url: UrlOpt = None,
              yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete a sweep with all its runs and values.

    Example: gammadb sweeps rm old-sweep --yes
    """
    from gammadb.store import Store

    if not yes:
        typer.confirm(f"delete sweep {name!r} and all its runs?", abort=True)
    with Store.open(url, create=False) as store:
        echo(f"deleted sweep {name!r} ({store.delete_sweep(name)} runs)")
