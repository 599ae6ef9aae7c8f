"""What a sweep runs and how, and what an invocation did: the vocabulary every launcher shares.

A :class:`SweepPlan` (the sweep's name, spec and run configs) becomes rows through :func:`prepare`;
each config is stored as a :class:`gammadb.records.RunSpec` keyed by its grid point
(:func:`run_spec`, :func:`point_key`). :class:`WorkOptions` say how a process trains what it claims,
and a :class:`SweepReport` counts how the runs it touched ended.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from gammadb.errors import InvalidSpecError
from gammadb.records import RunRecord, RunSpec, RunStatus
from gammadb.store import Store
from gammadb.runners.config import RunConfig

if TYPE_CHECKING:
    from gammadb.runners.spec import SweepSpec


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What to run: the sweep's name, its spec (stored verbatim with the sweep) and its runs.

    With ``adaptive``, the paper's learning-rate scan: for each (group, gamma), etas are tried from
    large to small; the first eta at which no seed diverges is the largest convergent one; the scan
    continues ``decades_below`` decades below it and stops (the remaining etas are never created);
    a NaN at a lower level moves the anchor below it (``gammadb.runners.eta_scan``, the authors' rule).
    """

    name: str
    spec: Mapping[str, Any]
    configs: Sequence[RunConfig]
    adaptive: bool = False
    decades_below: float = 2.0


def plan_of(spec: "SweepSpec") -> SweepPlan:
    return SweepPlan(name=spec.name, spec=spec.to_dict(), configs=spec.expand(),
                     adaptive=spec.adaptive, decades_below=spec.decades_below)


@dataclasses.dataclass(frozen=True)
class WorkOptions:
    device: str = "auto"
    checkpoint_dir: Optional[Path] = None
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_seconds: Optional[float] = 300.0
    flush_seconds: float = 2.0
    batch_rows: int = 500_000  # values a commit (the writer's default): chunks are rewritten per commit
    ensemble: int = 1  # train up to this many compatible grid points as one stacked model


@dataclasses.dataclass
class SweepReport:
    sweep: str
    total: int = 0
    skipped: int = 0  # already finished before this invocation
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    not_needed: int = 0  # adaptive scan: grid points below the scan's range
    run_ids: list[int] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    store_seconds: float = 0.0  # time spent waiting on store calls (workers)


def tally(report: SweepReport, status: RunStatus) -> None:
    """Count one finished run into the report."""
    if status == RunStatus.COMPLETED:
        report.completed += 1
    elif status == RunStatus.DIVERGED:
        report.diverged += 1
    elif status == RunStatus.FAILED:
        report.failed += 1


def run_spec(config: RunConfig) -> RunSpec:
    hp = config.hyper_params()
    return RunSpec(
        model=hp["model"], dataset=hp["dataset"], loss_fn=hp["loss_fn"], optimizer=hp["optimizer"],
        depth=hp["depth"], width=hp["width"], batch_size=hp["batch_size"], gamma=hp["gamma"],
        eta=hp["eta"], seed=hp["seed"], dtype=hp["dtype"], steps_planned=hp["steps"],
        config=config.to_dict(),
    )


def point_key(run: RunRecord) -> str:
    """The key of a stored run's grid point: the one stored when it was created (equal to
    ``run_spec(config).point_key()`` of the config it was created with; a migration that records a
    default in ``config``, such as 0003's ``test_reduction``, leaves the identity alone)."""
    return run.point_key or run_spec(RunConfig.from_dict(run.config)).point_key()


def prepare(store: Store, plan: SweepPlan) -> tuple[int, list[RunRecord]]:
    """Validate every config (nothing is written when one is bad), then create the sweep and runs."""
    if not plan.configs:
        raise InvalidSpecError(f"sweep {plan.name!r} has no runs: check the gamma/eta grids and seeds")
    for c in plan.configs:
        c.validate()
    sweep = store.ensure_sweep(plan.name, dict(plan.spec))
    store.requeue(plan.name, failed=True)  # runs left by a dead local process, and failed ones
    if plan.adaptive:
        return sweep.id, []
    return sweep.id, store.ensure_runs(sweep.id, [run_spec(c) for c in plan.configs])
