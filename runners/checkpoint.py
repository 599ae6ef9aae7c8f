"""Checkpoints of a training run: what is saved, when, and how a run resumes from the latest one.

A checkpoint is one ``torch.save`` file ``step_{t:09d}.pt`` holding the state after t updates:

  format     CHECKPOINT_FORMAT
  config     RunConfig.to_json() of the run (the config travels with its weights)
  step       t, the number of SGD updates done (the next logged step is t + 1)
  model      the Centered model's state dict: trained weights, theta_0 (init_net.*) and BN buffers
  optimizer  the optimiser's state dict (Adam moments; empty for SGD)
  data       the data stream's state ({'position': batches drawn})
  rng        the global torch RNG states (CPU, and CUDA where present)

Files are written to a temporary name and renamed, so a crash never leaves a torn latest checkpoint.
Everything in it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d{9})\.pt$")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to save and whether to resume.

    A checkpoint is saved after a step when ``every_steps`` steps or ``every_seconds`` seconds have
    passed since the last one (either trigger; both None = only at stop and at completion), when
    ``should_stop`` interrupts the run, and when the run completes. ``keep`` newest files are kept.
    With ``resume`` a run starts from the latest checkpoint in ``directory`` if there is one.
    """

    directory: Path
    every_steps: int | None = None
    every_seconds: float | None = None
    keep: int = 2
    resume: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError("every_steps must be >= 1")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ValueError("every_seconds must be > 0")
        if self.keep < 1:
            raise ValueError("keep must be >= 1")


class CheckpointClock:
    """Decides when the next checkpoint is due under a policy."""

    def __init__(self, policy: CheckpointPolicy, start_step: int):
        self.policy = policy
        self.last_step = start_step
        self.last_time = time.monotonic()

    def due(self, step: int) -> bool:
        p = self.policy
        if p.every_steps is not None and step - self.last_step >= p.every_steps:
            return True
        return p.every_seconds is not None and time.monotonic() - self.last_time >= p.every_seconds

    def saved(self, step: int) -> None:
        self.last_step = step
        self.last_time = time.monotonic()


def checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: Path) -> Path | None:
    files = checkpoint_files(Path(directory))
    return files[-1] if files else None


def save_checkpoint(directory: Path, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` (with 'step') atomically as step_{step:09d}.pt; prune to the ``keep`` newest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{int(state['step']):09d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
