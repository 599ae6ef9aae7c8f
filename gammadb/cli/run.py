"""gammadb run / gammadb worker: train sweeps into the store."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gammadb.cli.common import UrlOpt, echo


class Launcher(str, enum.Enum):
    none = "none"
    local = "local"
    slurm = "slurm"


DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto picks CUDA when present).")]
CkptOpt = Annotated[Optional[Path], typer.Option("--checkpoint-dir", help="Save resumable checkpoints under this directory.")]
CkptEveryOpt = Annotated[float, typer.Option("--checkpoint-every", help="Seconds between checkpoints (with --checkpoint-dir).")]
EnsembleOpt = Annotated[Optional[int], typer.Option("--ensemble", "-k", help="Train up to K compatible grid points (MLP/toy, SGD) as one stacked model [default: the sweep spec's ensemble, else 1].")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads per worker (default: cores / workers).")]


def run(
    spec_file: Annotated[Optional[Path], typer.Argument(help="A TOML sweep spec (see README); omit to use flags/presets.")] = None,
    url: UrlOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Start from a preset (default: quick).")] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the presets and exit.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep name (default: the preset's).")] = None,
    model: Annotated[Optional[str], typer.Option(help="mlp | cnn | resnet | vit | toy")] = None,
    task: Annotated[Optional[str], typer.Option(help="teacher | teacher_cls | staircase | gmm | mnist5k | mnist1m | cifar5m | toy")] = None,
    depth: Annotated[Optional[str], typer.Option(help="L; a comma list (2,3,4) sweeps it.")] = None,
    width: Annotated[Optional[str], typer.Option(help="N; a comma list sweeps it.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="B.")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="mse | xent")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd | signsgd | adam")] = None,
    gamma: Annotated[Optional[str], typer.Option(help="gamma values: 0.1,1,10 or a log grid lo:hi:n.")] = None,
    eta: Annotated[Optional[str], typer.Option(help="eta values: a list or a log grid lo:hi:n.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="A count n (0..n-1) or a list 0,3,7.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="SGD steps per run.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto (float64 when gamma < 1e-2) | float32 | float64")] = None,
    cadence: Annotated[Optional[str], typer.Option(help="Cadence metrics: log | every | none | N.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Directory of MNIST-1M / CIFAR-5M files.")] = None,
    adaptive: Annotated[Optional[bool], typer.Option("--adaptive/--full-grid", help="The paper's eta scan (large to small, stop below the largest convergent eta).")] = None,
    decades_below: Annotated[Optional[float], typer.Option("--decades-below", help="Adaptive scan: decades below the largest convergent eta.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config field: --set probe_size=128 (repeatable).")] = None,
    device: DeviceOpt = "auto",
    workers: Annotated[int, typer.Option("--workers", "-w", help="Local worker processes sharing the sweep.")] = 1,
    launcher: Annotated[Launcher, typer.Option(help="none: in this process / local workers; local|slurm: submitit jobs.")] = Launcher.none,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition.")] = None,
    gpus_per_task: Annotated[int, typer.Option("--gpus-per-task", help="SLURM GPUs per worker.")] = 0,
    array_parallelism: Annotated[int, typer.Option("--array-parallelism", help="SLURM: workers running at once.")] = 64,
    time_min: Annotated[int, typer.Option("--time", help="SLURM time limit per worker, minutes.")] = 240,
    checkpoint_dir: CkptOpt = None,
    checkpoint_every: CkptEveryOpt = 300.0,
    threads: ThreadsOpt = None,
    ensemble: EnsembleOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and an estimate of the wall time (from a few calibration steps on the device), then exit without touching the store.")] = False,
) -> None:
    """Run (or resume) a sweep: a TOML spec, a preset, or flags. Re-running skips finished runs.

    Example: gammadb run --model mlp --depth 3 --width 256 --gamma 1e-2:1e2:9 --eta 1e-3:1e3:13 --seeds 3 --steps 2000 --task teacher
    """
    from gammadb.errors import InvalidSpecError
    from gammadb.runners import presets
    from gammadb.runners import spec as specs

    if list_presets:
        for p in presets.list_presets():
            echo(f"{p.name:12s} {p.runs:6d} runs  {p.description}")
        return
    fields = {"model": model, "task": task, "depth": depth, "width": width, "batch_size": batch_size,
              "loss_fn": loss, "optimizer": optimizer, "dtype": dtype, "cadence": cadence,
              "data_dir": str(data_dir) if data_dir else None}
    set_fields = [f"{k}={v}" for k, v in fields.items() if v is not None] + list(set_ or [])
    if spec_file is not None:
        if preset or set_fields or gamma or eta or seeds or steps:
            raise InvalidSpecError("give either a spec file or grid flags (--preset/--gamma/--eta/...), not both")
        sweep_spec = specs.load_spec(spec_file)
        if name or adaptive is not None or decades_below is not None:
            import dataclasses

            sweep_spec = dataclasses.replace(
                sweep_spec, name=name or sweep_spec.name,
                adaptive=sweep_spec.adaptive if adaptive is None else adaptive,
                decades_below=sweep_spec.decades_below if decades_below is None else decades_below,
            ).validate()
    else:
        sweep_spec = specs.spec_from_flags(
            preset_name=preset, name=name, gamma=gamma, eta=eta, seeds=seeds, steps=steps,
            adaptive=adaptive, decades_below=decades_below, set_fields=set_fields,
        )
    if workers < 1:
        raise InvalidSpecError("--workers must be >= 1")
    if ensemble is not None and ensemble < 1:
        raise InvalidSpecError("--ensemble must be >= 1")
    from gammadb.runners.launch import LaunchOptions, launch

    options = LaunchOptions(
        device=device, workers=workers, launcher=launcher.value, partition=partition,
        gpus_per_task=gpus_per_task, array_parallelism=array_parallelism, time_min=time_min,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, threads=threads,
        ensemble=sweep_spec.ensemble if ensemble is None else ensemble,
        progress=not quiet and sys.stderr.isatty(), quiet=quiet,
    )
    if dry_run:
        from gammadb.runners.dryrun import estimate
        from gammadb.runners.plan import plan_of

        echo(estimate(plan_of(sweep_spec), options).text())
        return
    echo(launch(url, sweep_spec, options))


def worker(
    sweep: Annotated[str, typer.Option("--sweep", "-s", help="The sweep whose pending runs to claim.")],
    url: UrlOpt = None,
    device: DeviceOpt = "auto",
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", help="Stop after this many runs.")] = None,
    grace: Annotated[float, typer.Option(help="Seconds without a heartbeat before a running run is stale and requeued.")] = 300.0,
    checkpoint_dir: CkptOpt = None,
    checkpoint_every: CkptEveryOpt = 300.0,
    threads: ThreadsOpt = None,
    ensemble: EnsembleOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final line.")] = False,
) -> None:
    """Claim pending runs of a sweep from a shared store, train them, exit when none are left.

    Example: gammadb worker --sweep quick --url postgresql+psycopg://user@db-host/gammadb --device cuda
    """
    from gammadb.runners.launch import worker_main

    echo(worker_main(url, sweep, device=device, max_runs=max_runs, grace=grace, checkpoint_dir=checkpoint_dir,
                     checkpoint_every=checkpoint_every, threads=threads, quiet=quiet, ensemble=ensemble))
