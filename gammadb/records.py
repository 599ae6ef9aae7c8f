"""Frozen records the store returns: ORM rows never leave the store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any, Optional

from gammadb.schema import RunStatus

# Typed run columns that define a grid point (besides the config), in display order.
RUN_COLUMNS = ("model", "dataset", "loss_fn", "optimizer", "depth", "width", "batch_size")
POINT_COLUMNS = (*RUN_COLUMNS, "gamma", "eta", "seed")


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
