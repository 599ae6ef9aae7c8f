"""Run summaries: the maths from a loss series to one summary row per run (initial, final, min,
max, tail mean, diverged), and their replacement in the ``run_summaries`` table."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import polars as pl
from sqlalchemy import delete

from gammadb.metrics import LOSS
from gammadb.store.engine import _chunks, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

TAIL_FRACTION = 0.1  # run summaries' tail mean: the last 10% of logged steps


class SummariesMixin:
    """Summary rebuilds of :class:`gammadb.store.Store`."""

    def rebuild_summaries(self, sweep: str | None = None, run_ids: Sequence[int] | None = None) -> int:
        """Recompute run summaries from the stored loss series, and cache the bucketed loss of the
        runs not cached yet (:meth:`cache_loss_buckets`). Returns the number of runs."""
        if run_ids is None:
            run_ids = [r.id for r in self.runs(sweep=sweep)]
        if not run_ids:
            return 0
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(list(run_ids), 400):
            loss = self.series(chunk, metrics=[LOSS])
            rows.extend(summarize_losses(loss, chunk))
        with self.session_scope() as s:
            _replace_summaries(s, rows, utcnow())
        self.cache_loss_buckets(run_ids)
        return len(rows)


def summarize_losses(loss: pl.DataFrame, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per-run summary rows from a long loss frame (run_id, step, value)."""
    by_run = {int(k[0]): g.sort("step") for k, g in loss.group_by("run_id")} if not loss.is_empty() else {}
    rows = []
    for run_id in run_ids:
        g = by_run.get(int(run_id))
        if g is None or g.is_empty():
            rows.append(dict(run_id=run_id, initial_loss=None, final_loss=None, final_step=None,
                             min_loss=None, min_loss_step=None, max_loss=None, tail_mean_loss=None, diverged=False,
                             steps_logged=0))
            continue
        steps = g["step"].to_list()
        values = g["value"].to_list()
        finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        diverged = len(finite) < len(values)
        n_tail = max(1, math.ceil(TAIL_FRACTION * len(values)))
        tail = values[-n_tail:]
        min_step, min_val = min(finite, key=lambda sv: sv[1]) if finite else (None, None)
        rows.append(dict(
            run_id=run_id, initial_loss=_finite_or_none(values[0]), final_loss=_finite_or_none(values[-1]),
            final_step=steps[-1], min_loss=min_val, min_loss_step=min_step,
            max_loss=max(v for _, v in finite) if finite else None,
            tail_mean_loss=(sum(tail) / len(tail)) if all(math.isfinite(v) for v in tail) else None,
            diverged=diverged, steps_logged=len(values),
        ))
    return rows


def _replace_summaries(session: Session, rows: list[dict[str, Any]], now: dt.datetime) -> None:
    """Inside the caller's transaction: the summaries of ``rows``' runs become ``rows``."""
    from gammadb.schema import RunSummary

    if not rows:
        return
    for chunk in _chunks([r["run_id"] for r in rows], 500):
        session.execute(delete(RunSummary).where(RunSummary.run_id.in_(chunk)))
    session.execute(RunSummary.__table__.insert(), [{**r, "updated_at": now} for r in rows])


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None
