"""Frozen records the store returns (ORM rows never leave the store) and the vocabulary every layer
shares with them: run statuses, the run columns, and how a stored float hyper-parameter is matched."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import polars as pl

#: Typed run columns that define a grid point (besides the config), in display order. Runs that
#: share all of them are comparable: they differ only in (gamma, eta, seed).
RUN_COLUMNS = ("model", "dataset", "loss_fn", "optimizer", "depth", "width", "batch_size")
POINT_COLUMNS = (*RUN_COLUMNS, "gamma", "eta", "seed")

#: Relative tolerance within which a stored float hyper-parameter (gamma, eta) matches a wanted one.
#: Wide enough that a value typed back from a 6-significant-digit display of a grid value (``%g``:
#: 0.00316228 for 10^-2.5; rounding to 6 figures moves a value by up to 5e-6 relative when it starts
#: with a 1) always finds it, far narrower than any grid's spacing.
REL_TOL = 1e-5


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.DIVERGED)


#: The statuses of a run that ended with a result (its values are final), as stored strings.
FINISHED = (RunStatus.COMPLETED.value, RunStatus.DIVERGED.value)


def same_value(stored: float, wanted: float) -> bool:
    """Whether the stored float hyper-parameter ``stored`` is the value ``wanted``: equal within
    ``REL_TOL`` of ``wanted`` (so the same test as :func:`value_bounds` and :func:`same_value_expr`)."""
    return abs(stored - wanted) <= REL_TOL * abs(wanted)


def value_bounds(wanted: float) -> tuple[float, float]:
    """The closed interval of stored values that :func:`same_value` matches to ``wanted`` (for a
    ``BETWEEN ? AND ?`` with bound parameters)."""
    lo, hi = wanted - REL_TOL * abs(wanted), wanted + REL_TOL * abs(wanted)
    return lo, hi


def same_value_expr(column: str, wanted: float) -> "pl.Expr":
    """:func:`same_value` as a polars expression on ``column``."""
    import polars as pl

    return (pl.col(column) - wanted).abs() <= REL_TOL * abs(wanted)


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    id: int
    name: str
    spec: dict[str, Any]
    code_version: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a caller asks the store to create: the typed columns plus the full config."""

    model: str
    dataset: str
    loss_fn: str
    optimizer: str
    depth: Optional[int]
    width: Optional[int]
    batch_size: Optional[int]
    gamma: float
    eta: float
    seed: int
    dtype: str
    steps_planned: int
    config: dict[str, Any]
    device: str = "unassigned"

    def point_key(self) -> str:
        """A digest of everything that makes this run a distinct point (config included, device
        excluded): re-submitting the same point finds the existing run."""
        doc = {c: getattr(self, c) for c in POINT_COLUMNS}
        doc["config"] = {k: v for k, v in self.config.items() if k != "device"}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    id: int
    sweep_id: int
    sweep: str
    model: str
    dataset: str
    loss_fn: str
    optimizer: str
    depth: Optional[int]
    width: Optional[int]
    batch_size: Optional[int]
    gamma: float
    eta: float
    seed: int
    dtype: str
    device: str
    config: dict[str, Any]
    status: RunStatus
    steps_planned: int
    steps_done: int
    diverged_at: Optional[int]
    error: Optional[str]
    worker: Optional[str]
    heartbeat_at: Optional[dt.datetime]
    created_at: dt.datetime
    started_at: Optional[dt.datetime]
    finished_at: Optional[dt.datetime]
    #: The grid point's key as stored: the run's identity, fixed when it was created (a migration
    #: may add fields to ``config`` that a recomputed key would then include).
    point_key: str = ""


@dataclasses.dataclass(frozen=True)
class SummaryRecord:
    run_id: int
    initial_loss: Optional[float]
    final_loss: Optional[float]
    final_step: Optional[int]
    min_loss: Optional[float]
    min_loss_step: Optional[int]
    tail_mean_loss: Optional[float]
    diverged: bool
    steps_logged: int
    max_loss: Optional[float] = None  # the largest finite loss (None: none, or a summary from before 0006)


#: Columns of the ``run_overview`` view a ``--where`` condition may name, with their kinds.
WHERE_COLUMNS: dict[str, type] = {
    "run_id": int, "gamma": float, "eta": float, "seed": int, "depth": int, "width": int,
    "batch_size": int, "steps_planned": int, "steps_done": int, "diverged_at": int,
    "initial_loss": float, "final_loss": float, "min_loss": float, "tail_mean_loss": float,
    "model": str, "dataset": str, "loss_fn": str, "optimizer": str, "status": str,
}


@dataclasses.dataclass(frozen=True)
class Condition:
    """One ``column op value`` condition on a run (parsed from ``--where`` by the analysis, rendered
    as SQL by the store): ``column`` from :data:`WHERE_COLUMNS`, ``op`` one of = <> < <= > >= IN,
    ``values`` typed (one value, or several for IN), always bound as parameters, never SQL text."""

    column: str
    op: str
    values: tuple[Any, ...]

