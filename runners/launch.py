"""Launching sweeps: in this process, as local worker processes, or as submitit jobs (local/SLURM).

Every path goes through the store: `prepare` creates the runs, workers claim them transactionally,
so any mix of launchers and machines can drain one sweep without running a point twice.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from gammadb.errors import InvalidSpecError
from gammadb.records import RunRecord, RunStatus
from gammadb.store import Store
from gammadb.urls import resolve_url
from gammadb.runners.adaptive import advance_adaptive
from gammadb.runners.plan import SweepReport, WorkOptions, plan_of, point_key, prepare, run_spec, tally
from gammadb.runners.reporters import LineReporter, NullReporter, RichReporter
from gammadb.runners.signals import terminate_raises_interrupt
from gammadb.runners.spec import SweepSpec
from gammadb.runners.sweep import run_sweep, work

if TYPE_CHECKING:
    import polars as pl


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    device: str = "auto"
    workers: int = 1
    launcher: str = "none"  # none | local | slurm
    partition: Optional[str] = None
    gpus_per_task: int = 0
    array_parallelism: int = 64
    time_min: int = 240
    checkpoint_dir: Optional[Path] = None
    checkpoint_every: float = 300.0
    threads: Optional[int] = None
    ensemble: int = 1
    progress: bool = True
    quiet: bool = False


def set_threads(threads: Optional[int], workers: int = 1) -> None:
    import torch

    # One intra-op thread per worker unless asked: the paper's networks are small, and with more
    # threads than free cores a width-64 step was measured 12x slower here (79 ms vs 6.6 ms).
    torch.set_num_threads(max(1, threads or 1))


def launch(url: Optional[str], spec: SweepSpec, opts: LaunchOptions) -> str:
    """Run ``spec`` as ``opts`` says; returns the final summary text."""
    plan = plan_of(spec)  # validates every config before anything is written
    work_opts = WorkOptions(device=opts.device, checkpoint_dir=opts.checkpoint_dir,
                            checkpoint_every_seconds=opts.checkpoint_every, ensemble=opts.ensemble)
    with Store.open(url) as store:
        if opts.workers == 1 and opts.launcher == "none":
            set_threads(opts.threads)
            reporter: Any = (RichReporter() if opts.progress else LineReporter()) if not opts.quiet else NullReporter()
            with reporter:
                report = run_sweep(store, plan, work_opts, reporter)
            return summary_text(store, report)
        t0 = time.perf_counter()
        _, runs = prepare(store, plan)
        planned = {run_spec(c).point_key() for c in plan.configs}

        def plan_runs() -> list[RunRecord]:
            return [r for r in store.runs(sweep=plan.name) if point_key(r) in planned]

        if plan.adaptive:  # the workers scan together: create the first levels, they do the rest
            advance_adaptive(store, plan.name)
            runs = plan_runs()
        if opts.launcher == "none":
            try:
                _local_workers(url, plan.name, opts)
            finally:  # a worker killed outright (OOM, SIGKILL) leaves no run 'running' behind it
                store.requeue(plan.name)
        else:
            done = _submitit(url, plan.name, opts)
            if not done:
                return (f"submitted {opts.workers} workers for sweep {plan.name!r} to SLURM; watch with "
                        f"`gammadb sweeps ls` and `gammadb runs ls --sweep {plan.name}`")
        report = SweepReport(sweep=plan.name, total=len(plan.configs) if plan.adaptive else len(runs),
                             skipped=sum(r.status.finished for r in runs))
        done_before = {r.id for r in runs if r.status.finished}
        now = plan_runs()
        report.run_ids = [r.id for r in now]
        for r in now:
            if r.id not in done_before:
                tally(report, r.status)
        if plan.adaptive:
            report.not_needed = len(plan.configs) - len(now)
        report.seconds = time.perf_counter() - t0
        return summary_text(store, report)


def worker_main(url: Optional[str], sweep: str, *, device: str = "auto", max_runs: Optional[int] = None,
                grace: float = 300.0, checkpoint_dir: Optional[Path] = None, checkpoint_every: float = 300.0,
                threads: Optional[int] = None, quiet: bool = False, ensemble: Optional[int] = None) -> str:
    """`gammadb worker`: drain a sweep's pending runs (``ensemble`` None: the sweep spec's)."""
    _stop_with_parent()
    set_threads(threads)
    with Store.open(url) as store:
        if ensemble is None:
            ensemble = int(store.get_sweep(sweep).spec.get("ensemble", 1))
        reporter = NullReporter() if quiet else LineReporter()
        report = work(store, sweep, WorkOptions(device=device, checkpoint_dir=checkpoint_dir,
                                                checkpoint_every_seconds=checkpoint_every, ensemble=ensemble),
                      reporter, max_runs=max_runs, stale_after_s=grace)
    wait = report.store_seconds / report.seconds if report.seconds else 0.0
    return (f"worker done: {report.total} runs ({report.completed} completed, {report.diverged} diverged, "
            f"{report.failed} failed) in {report.seconds:.1f} s, {100 * wait:.1f}% of it waiting on the store")


def _worker_env(url: Optional[str]) -> dict[str, str]:
    # The URL travels in the environment, not on a command line that `ps` shows to every user.
    return {**os.environ, "GAMMADB_URL": resolve_url(url)}


PARENT_PID_ENV = "GAMMADB_PARENT_PID"  # set for the workers of `gammadb run --workers N`: the launcher's pid


def _stop_with_parent() -> None:
    """A local worker stops when the `gammadb run` that launched it dies, even by SIGKILL: it gets
    SIGTERM and stops as on `kill` (its runs go back to pending). Linux sends the signal itself (the
    parent-death signal); elsewhere a thread checks the parent pid every second."""
    parent = os.environ.pop(PARENT_PID_ENV, "")  # not inherited by anything this worker starts
    if not parent.isdigit():
        return
    if not _parent_death_signal(signal.SIGTERM):
        _poll_parent(int(parent))
    if os.getppid() != int(parent):  # the launcher died before the signal was armed
        raise KeyboardInterrupt("the launching process is gone")


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        return libc.prctl(ctypes.c_int(pr_set_pdeathsig), ctypes.c_ulong(signum), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int, every_seconds: float = 1.0) -> threading.Thread:
    """Send this process SIGTERM once its parent is no longer ``parent_pid`` (an orphan is adopted)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="gammadb-parent-watch", daemon=True)
    thread.start()
    return thread


def _local_workers(url: Optional[str], sweep: str, opts: LaunchOptions) -> None:
    threads = opts.threads or 1
    cmd = [sys.executable, "-m", "gammadb", "worker", "--sweep", sweep, "--device", opts.device,
           "--threads", str(threads), "--ensemble", str(opts.ensemble), "--quiet"]
    if opts.checkpoint_dir is not None:
        cmd += ["--checkpoint-dir", str(opts.checkpoint_dir), "--checkpoint-every", str(opts.checkpoint_every)]
    env = {**_worker_env(url), PARENT_PID_ENV: str(os.getpid())}
    procs: list[subprocess.Popen] = []
    try:
        with terminate_raises_interrupt():
            for _ in range(opts.workers):
                procs.append(subprocess.Popen(cmd, env=env))
            for p in procs:
                p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()  # each worker commits its batch and puts its run back to pending
        for p in procs:
            p.wait()
        raise


def _submitit_job(url: str, sweep: str, device: str, checkpoint_dir: Optional[str], threads: Optional[int],
                  ensemble: int = 1) -> str:
    return worker_main(url, sweep, device=device, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                       threads=threads, quiet=True, ensemble=ensemble)


def _submitit(url: Optional[str], sweep: str, opts: LaunchOptions) -> bool:
    """Submit workers through submitit; True when they ran to completion here (local executor)."""
    try:
        import submitit
    except ImportError:
        raise InvalidSpecError("--launcher needs submitit: pip install 'gammadb[slurm]'") from None
    folder = Path(".gammadb-submitit") / sweep
    if opts.launcher == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=opts.time_min)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = dict(timeout_min=opts.time_min, slurm_array_parallelism=opts.array_parallelism,
                                      gpus_per_node=opts.gpus_per_task, tasks_per_node=1, cpus_per_task=max(1, opts.threads or 4))
        if opts.partition:
            params["slurm_partition"] = opts.partition
        executor.update_parameters(**params)
    args = [resolve_url(url)] * opts.workers
    ck = str(opts.checkpoint_dir) if opts.checkpoint_dir else None
    jobs = executor.map_array(_submitit_job, args, [sweep] * opts.workers, [opts.device] * opts.workers,
                              [ck] * opts.workers, [opts.threads or 1] * opts.workers, [opts.ensemble] * opts.workers)
    if opts.launcher == "local":
        for job in jobs:
            job.result()
        return True
    return False


#: The order in which the summary counts runs by status.
_STATUS_ORDER = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED, RunStatus.PENDING, RunStatus.RUNNING)


def summary_text(store: Store, report: SweepReport) -> str:
    runs = store.runs_frame(report.sweep)
    if report.run_ids:
        import polars as pl

        runs = runs.filter(pl.col("run_id").is_in(report.run_ids))
    by_status = {s.value: int((runs["status"] == s.value).sum()) for s in _STATUS_ORDER}
    lines = [
        f"sweep {report.sweep!r}: {runs.height} runs in the store for this spec: "
        + ", ".join(f"{n} {s}" for s, n in by_status.items() if n),
        f"this invocation: {report.completed} completed, {report.diverged} diverged, {report.failed} failed, "
        f"{report.skipped} already done" + (f", {report.not_needed} skipped by the adaptive scan" if report.not_needed else "")
        + f" ({report.seconds:.1f} s)",
    ]
    if runs.height and "final_loss" in runs.columns:
        import polars as pl

        lines.extend(_per_gamma_table(runs))
        best = (runs.filter((pl.col("status") == RunStatus.COMPLETED.value) & pl.col("final_loss").is_not_null())
                .sort("final_loss").head(1))
        if best.height:
            b = best.row(0, named=True)
            lines.append(f"best final loss {b['final_loss']:.4g} at gamma={b['gamma']:g}, eta={b['eta']:g} (run {b['run_id']})")
    lines.append(f"next: gammadb analyze optimal-lr --sweep {report.sweep}")
    return "\n".join(lines)


def _per_gamma_table(runs: "pl.DataFrame") -> list[str]:
    """The final table: per gamma, runs by status and the eta with the lowest final loss."""
    import polars as pl

    per = (
        runs.sort("final_loss", nulls_last=True).group_by("gamma", maintain_order=True).agg(
            pl.len().alias("runs"),
            (pl.col("status") == RunStatus.COMPLETED.value).sum().alias("completed"),
            (pl.col("status") == RunStatus.DIVERGED.value).sum().alias("diverged"),
            pl.col("eta").filter(pl.col("status") == RunStatus.COMPLETED.value).first().alias("best_eta"),
            pl.col("final_loss").filter(pl.col("status") == RunStatus.COMPLETED.value).first().alias("best_loss"),
        ).sort("gamma")
    )
    out = [f"{'gamma':>10} {'runs':>5} {'done':>5} {'diverged':>8} {'best eta':>10} {'final loss':>11}"]
    for r in per.iter_rows(named=True):
        eta = f"{r['best_eta']:10.3g}" if r["best_eta"] is not None else f"{'-':>10}"
        loss = f"{r['best_loss']:11.4g}" if r["best_loss"] is not None else f"{'-':>11}"
        out.append(f"{r['gamma']:10.3g} {r['runs']:5d} {r['completed']:5d} {r['diverged']:8d} {eta} {loss}")
    return out

