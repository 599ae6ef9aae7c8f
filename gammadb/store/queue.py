"""The run queue: workers claim pending runs atomically, beat their heart, record each run's end
(with its summary, in the same transaction), and stale or failed runs go back to pending."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from sqlalchemy import select, update

from gammadb.metrics import LOSS, MetricKey
from gammadb.records import RunRecord, RunStatus
from gammadb.store.chunks import truncate_after
from gammadb.store.engine import utcnow, worker_id
from gammadb.store.summaries import _replace_summaries, summarize_losses
from gammadb.store.sweeps import _run_record
from gammadb.urls import mask


class QueueMixin:
    """Claims, heartbeats and run ends of :class:`gammadb.store.Store`."""

    def mark_running(self, run_id: int, *, worker: str | None = None, device: str | None = None) -> None:
        from gammadb.schema import Run

        values: dict[str, Any] = dict(
            status=RunStatus.RUNNING, worker=worker or worker_id(), heartbeat_at=utcnow(),
            started_at=utcnow(), error=None, finished_at=None,
        )
        if device is not None:
            values["device"] = device
        with self.session_scope() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def claim_next(self, sweep_id: int, *, worker: str | None = None,
                   run_ids: Sequence[int] | None = None) -> Optional[RunRecord]:
        """Atomically take one pending run of the sweep (optionally among ``run_ids``) for ``worker``.

        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: the session's ``BEGIN IMMEDIATE``
        makes the select-and-update one writer at a time. No run is ever claimed twice.
        """
        from gammadb.schema import Run, Sweep

        with self.session_scope() as s:
            q = select(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.PENDING)
            if run_ids is not None:
                q = q.where(Run.id.in_(list(run_ids)))
            q = q.order_by(Run.id).limit(1).with_for_update(skip_locked=True)
            row = s.scalar(q)
            if row is None:
                return None
            now = utcnow()
            row.status, row.worker, row.heartbeat_at, row.started_at = RunStatus.RUNNING, worker or worker_id(), now, now
            row.error, row.finished_at = None, None
            s.flush()
            return _run_record(row, s.scalar(select(Sweep.name).where(Sweep.id == sweep_id)))

    def claim_many(self, sweep_id: int, run_ids: Sequence[int], *, limit: int,
                   worker: str | None = None) -> list[RunRecord]:
        """Claim up to ``limit`` pending runs among ``run_ids`` in one transaction (an ensemble)."""
        from gammadb.schema import Run, Sweep

        if not run_ids or limit < 1:
            return []
        with self.session_scope() as s:
            q = (select(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.PENDING,
                                   Run.id.in_(list(run_ids)))
                 .order_by(Run.id).limit(limit).with_for_update(skip_locked=True))
            rows = list(s.scalars(q))
            now, who = utcnow(), worker or worker_id()
            for row in rows:
                row.status, row.worker, row.heartbeat_at, row.started_at = RunStatus.RUNNING, who, now, now
                row.error, row.finished_at = None, None
            s.flush()
            name = s.scalar(select(Sweep.name).where(Sweep.id == sweep_id))
            return [_run_record(r, name) for r in rows]

    def heartbeat(self, run_id: int, steps_done: int | None = None) -> None:
        from gammadb.schema import Run

        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if steps_done is not None:
            values["steps_done"] = steps_done
        with self.session_scope() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def finish_run(self, run_id: int, status: RunStatus, *, steps_done: int,
                   diverged_at: int | None = None, error: str | None = None,
                   summarize: bool = True, cache: bool = True) -> None:
        """Record a run's end and (for a finished run) its summary: :meth:`finish_runs` of one run."""
        self.finish_runs([(run_id, status, steps_done, diverged_at)], error=error, summarize=summarize, cache=cache)

    def finish_runs(self, ends: Sequence[tuple[int, RunStatus, int, Optional[int]]], *, error: str | None = None,
                    summarize: bool = True, cache: bool = True) -> None:
        """Record runs' ends, (run_id, status, steps_done, diverged_at) each, and the summaries of
        those that finished, in one transaction: a run is never 'completed' without its summary,
        whatever interrupts this call, and it is safe to repeat. The summaries come from one read of
        the runs' loss series, a slice of runs at a time, so an ensemble's K members end in one read
        and one commit, not K. Then, with ``cache``, best effort, the summarised runs' losses are
        bucketed into the store's cache in one call (:meth:`cache_loss_buckets`). ``error``: the
        text recorded for each of them (a failure's)."""
        from gammadb.schema import Run

        if not ends:
            return
        done = [int(rid) for rid, st, _, _ in ends if st.finished] if summarize else []
        rows: list[dict[str, Any]] = []
        for part in self._loss_slices(done, keep_long=True):  # read through the driver: no ADBC connection (50 ms)
            rows += summarize_losses(self.values_frame(part, MetricKey(LOSS)), part)
        now = utcnow()
        text = mask(error)[:4000] if error else None
        with self.session_scope() as s:
            s.execute(update(Run), [
                {"id": rid, "status": st, "steps_done": n, "diverged_at": div, "error": text,
                 "finished_at": now, "heartbeat_at": now}
                for rid, st, n, div in ends
            ])
            _replace_summaries(s, rows, now)
        if rows and cache:
            self.cache_loss_buckets(done)

    def reset_runs(self, run_ids: Sequence[int]) -> int:
        """Put running runs back to pending (their committed steps stay and are overwritten on
        rerun); runs that already ended are left alone."""
        from gammadb.schema import Run

        if not run_ids:
            return 0
        with self.session_scope() as s:
            res = s.execute(
                update(Run).where(Run.id.in_(list(run_ids)), Run.status == RunStatus.RUNNING).values(
                    status=RunStatus.PENDING, worker=None, error=None, finished_at=None
                )
            )
            return res.rowcount or 0

    def release_worker(self, worker: str | None = None) -> int:
        """Put every run that ``worker`` (default: this process) holds as running back to pending."""
        from gammadb.schema import Run

        with self.session_scope() as s:
            res = s.execute(
                update(Run).where(Run.worker == (worker or worker_id()), Run.status == RunStatus.RUNNING)
                .values(status=RunStatus.PENDING, worker=None)
            )
            return res.rowcount or 0

    def requeue(self, sweep: str | None = None, *, stale_after_s: float | None = None,
                failed: bool = False) -> list[int]:
        """Put stale running runs (heartbeat older than ``stale_after_s``, or owned by a dead local
        process) and, with ``failed``, failed runs back to pending. Diverged runs are results and
        are never requeued. Returns the requeued run ids."""
        from gammadb.schema import Run, Sweep

        now = utcnow()
        ids: list[int] = []
        host = socket.gethostname()
        with self.session_scope() as s:
            q = select(Run.id, Run.status, Run.worker, Run.heartbeat_at).join(Sweep, Sweep.id == Run.sweep_id)
            if sweep is not None:
                q = q.where(Sweep.name == sweep)
            q = q.where(Run.status.in_([RunStatus.RUNNING, RunStatus.FAILED]))
            for run_id, status, worker, beat in s.execute(q):
                if status == RunStatus.FAILED:
                    if failed:
                        ids.append(run_id)
                    continue
                if _dead_local_worker(worker, host):
                    ids.append(run_id)
                elif stale_after_s is not None and beat is not None:
                    if beat.tzinfo is None:
                        beat = beat.replace(tzinfo=dt.timezone.utc)
                    if (now - beat).total_seconds() > stale_after_s:
                        ids.append(run_id)
            if ids:
                s.execute(update(Run).where(Run.id.in_(ids)).values(status=RunStatus.PENDING, worker=None))
        return ids

    def delete_steps_after(self, run_id: int, step: int) -> None:
        """Drop a run's values after ``step`` (a restarted run rewrites them)."""
        self.delete_steps_after_each({run_id: step})

    def delete_steps_after_each(self, last: Mapping[int, int]) -> None:
        """:meth:`delete_steps_after` of each run of ``last`` ({run_id: step}), in one transaction."""
        with self.session_scope() as s:
            conn = s.connection().connection.dbapi_connection
            for run_id, step in last.items():
                truncate_after(self.backend, conn, run_id, step)


def _dead_local_worker(worker: str | None, host: str) -> bool:
    if not worker or ":" not in worker:
        return False
    w_host, _, pid = worker.rpartition(":")
    if w_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
