"""Sweeps and their runs as records: create them (idempotently, by name and by point key), look them
up, delete a sweep; ORM rows become frozen records here and never leave the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from gammadb import code_version as current_code_version
from gammadb.errors import GammadbError, InvalidSpecError, NotFoundError
from gammadb.records import RunRecord, RunSpec, RunStatus, SweepRecord
from gammadb.store.engine import _chunks, _one_line

if TYPE_CHECKING:
    from gammadb.schema import Run, Sweep


# The sweeps table as SQLAlchemy Core reads it, with the ORM model's column types (gammadb.schema.Sweep;
# tests/store/test_store.py holds the two to the same columns and types).
_SWEEPS = sa.table("sweeps", sa.column("id", sa.Integer), sa.column("name", sa.String(200)),
                   sa.column("spec", sa.JSON), sa.column("code_version", sa.String(64)),
                   sa.column("created_at", sa.DateTime(timezone=True)))


class SweepsMixin:
    """Sweeps and runs of :class:`gammadb.store.Store`."""

    def ensure_sweep(self, name: str, spec: Mapping[str, Any], code_version: str | None = None) -> SweepRecord:
        """The sweep called ``name``, created with ``spec`` if it does not exist yet (``code_version``
        defaults to :func:`gammadb.code_version`: the version and, from a git checkout, the commit)."""
        from gammadb.schema import Sweep

        if not name or len(name) > 200:
            raise InvalidSpecError("a sweep name must have 1 to 200 characters")
        for attempt in range(2):
            try:
                with self.session_scope() as s:
                    row = s.scalar(select(Sweep).where(Sweep.name == name))
                    if row is None:
                        row = Sweep(name=name, spec=dict(spec), code_version=code_version or current_code_version())
                        s.add(row)
                        s.flush()
                    return _sweep_record(row)
            except GammadbError:
                if attempt:  # lost a creation race to another worker: read the winner's row
                    raise
        raise AssertionError("unreachable")

    def get_sweep(self, name: str) -> SweepRecord:
        """The sweep called ``name``; NotFoundError naming the store's first sweeps. Read through
        SQLAlchemy Core, not the ORM: every command looks its sweep up, and a read-only one then
        never imports or configures the ORM (0.1-0.15 s of its start)."""
        try:
            with self._connect() as conn:
                row = conn.execute(select(_SWEEPS).where(_SWEEPS.c.name == name)).first()
                if row is None:
                    known = conn.execute(select(_SWEEPS.c.name).order_by(_SWEEPS.c.id).limit(10)).scalars().all()
                    hint = f" (sweeps: {', '.join(known)})" if known else " (the store has no sweeps yet)"
                    raise NotFoundError(f"no sweep named {name!r}{hint}")
        except SQLAlchemyError as exc:
            raise GammadbError(f"store error: {_one_line(exc)}") from None
        return _sweep_record(row)

    def ensure_runs(self, sweep_id: int, specs: Sequence[RunSpec]) -> list[RunRecord]:
        """Create the runs that do not exist yet (by point key); return all, in ``specs`` order."""
        from gammadb.schema import Run, Sweep

        keys = [spec.point_key() for spec in specs]
        with self.session_scope() as s:
            sweep_name = s.scalar(select(Sweep.name).where(Sweep.id == sweep_id))
            if sweep_name is None:
                raise NotFoundError(f"no sweep with id {sweep_id}")
            existing: dict[str, Run] = {}
            for chunk in _chunks(keys, 500):
                rows = s.scalars(select(Run).where(Run.sweep_id == sweep_id, Run.point_key.in_(chunk)))
                existing.update({r.point_key: r for r in rows})
            for key, spec in zip(keys, specs):
                if key not in existing:
                    row = Run(
                        sweep_id=sweep_id, point_key=key, model=spec.model, dataset=spec.dataset,
                        loss_fn=spec.loss_fn, optimizer=spec.optimizer, depth=spec.depth,
                        width=spec.width, batch_size=spec.batch_size, gamma=spec.gamma, eta=spec.eta,
                        seed=spec.seed, dtype=spec.dtype, device=spec.device, config=spec.config,
                        status=RunStatus.PENDING, steps_planned=spec.steps_planned, steps_done=0,
                    )
                    s.add(row)
                    existing[key] = row
            s.flush()
            return [_run_record(existing[k], sweep_name) for k in keys]

    def get_run(self, run_id: int) -> RunRecord:
        from gammadb.schema import Run, Sweep

        with self.session_scope() as s:
            row = s.get(Run, run_id)
            if row is None:
                raise NotFoundError(f"no run with id {run_id} (list them with `gammadb runs ls`)")
            return _run_record(row, s.scalar(select(Sweep.name).where(Sweep.id == row.sweep_id)))

    def runs(self, sweep: str | None = None, status: RunStatus | None = None) -> list[RunRecord]:
        from gammadb.schema import Run, Sweep

        with self.session_scope() as s:
            q = select(Run, Sweep.name).join(Sweep, Sweep.id == Run.sweep_id).order_by(Run.id)
            if sweep is not None:
                q = q.where(Sweep.name == sweep)
            if status is not None:
                q = q.where(Run.status == status)
            return [_run_record(r, name) for r, name in s.execute(q)]

    def delete_sweep(self, name: str) -> int:
        from gammadb.schema import MetricChunk, Run, RunSummary, Sweep

        sweep = self.get_sweep(name)
        with self.session_scope() as s:
            ids = s.scalars(select(Run.id).where(Run.sweep_id == sweep.id)).all()
            for chunk in _chunks(list(ids), 500):
                s.execute(delete(MetricChunk).where(MetricChunk.run_id.in_(chunk)))
                s.execute(delete(RunSummary).where(RunSummary.run_id.in_(chunk)))
            s.execute(delete(Run).where(Run.sweep_id == sweep.id))
            s.execute(delete(Sweep).where(Sweep.id == sweep.id))
            return len(ids)


def _sweep_record(row: "Sweep | sa.Row[Any]") -> SweepRecord:
    """A sweep's record from its ORM row or a Core row of :data:`_SWEEPS`."""
    return SweepRecord(row.id, row.name, dict(row.spec), row.code_version, row.created_at)


def _run_record(row: Run, sweep_name: str) -> RunRecord:
    return RunRecord(
        id=row.id, sweep_id=row.sweep_id, sweep=sweep_name, model=row.model, dataset=row.dataset,
        loss_fn=row.loss_fn, optimizer=row.optimizer, depth=row.depth, width=row.width,
        batch_size=row.batch_size, gamma=row.gamma, eta=row.eta, seed=row.seed, dtype=row.dtype,
        device=row.device, config=dict(row.config), status=RunStatus(row.status),
        steps_planned=row.steps_planned, steps_done=row.steps_done, diverged_at=row.diverged_at,
        error=row.error, worker=row.worker, heartbeat_at=row.heartbeat_at, created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at, point_key=row.point_key,
    )
