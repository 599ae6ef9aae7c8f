"""The store's all-or-nothing import: one transaction writes an import's sweep, runs, metric names,
values, run statuses and summaries, so a failed or killed import leaves the store as it was.

Called through :meth:`gammadb.store.Store.import_runs` (one frame) or :func:`import_batches` (a
stream of batches, written as they come: memory is bounded by a batch). Runs are found by their
point key (the digest of hyper-parameters and seed, :meth:`gammadb.records.RunSpec.point_key`), so a
later file extends the runs an earlier one created. Each batch's values are merged into
``metric_chunks`` (:func:`gammadb.store.chunks.write_series`); a (run, metric, step) stored before
the import with another value is found before that batch is written, and fails the import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import polars as pl
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.metrics import LOSS, MetricKey
from gammadb.records import RunSpec, RunStatus
from gammadb.schema import Metric, Run, Sweep
from gammadb.store import chunks
from gammadb.store.engine import _chunks, _one_line, _unavailable, utcnow
from gammadb.store.reads import ensure_metric_ids
from gammadb.store.summaries import _replace_summaries, summarize_losses

FINISH_VALUES = 500_000  # loss values read at a time to summarise the runs at the end


class ValueConflictError(InvalidSpecError):
    """The store already holds another value at a (run, metric, step) of the import."""

    def __init__(self, row: int, key: MetricKey, step: int, stored: float, incoming: float, count: int) -> None:
        self.row, self.key, self.step, self.stored, self.incoming, self.count = row, key, step, stored, incoming, count
        super().__init__(f"row {row}: {key.name} (layer {key.layer}) at step {step} is {stored!r} in the store "
                         f"and {incoming!r} in the file ({count} such values)")


@dataclasses.dataclass(frozen=True)
class ImportBatch:
    """One slice of an import, in the order of the file. ``specs`` and ``keys`` are the runs and
    series first met in this batch: they continue the import's numbering (``run_idx``, ``key_idx``)
    after those of the batches before. ``values`` as in :func:`import_runs`."""

    specs: Sequence[RunSpec]
    keys: Sequence[MetricKey]
    values: pl.DataFrame


@dataclasses.dataclass(frozen=True)
class ImportResult:
    run_ids: list[int]  # in ``specs`` order
    new_runs: int
    values: int  # values in the file (written, or already stored with the same value)
    replaced: int  # stored values the file overwrote (``replace=True``)
    diverged: int  # runs diverged after the import (over all their stored steps)


def import_runs(store: Any, sweep: str, sweep_spec: Mapping[str, Any], specs: Sequence[RunSpec],
                keys: Sequence[MetricKey], values: pl.DataFrame, *, replace: bool = False) -> ImportResult:
    """Write one import in one transaction.

    ``values`` has columns ``row`` (the file's row, for messages), ``run_idx`` (into ``specs``),
    ``key_idx`` (into ``keys``), ``step`` and ``value`` (NaN kept), one row per (run, metric, step).
    A value that differs from a stored one raises :class:`ValueConflictError` and writes nothing,
    unless ``replace``. The runs' status, steps and summaries are recomputed over all their stored
    steps, so a file of later steps extends runs.
    """
    return import_batches(store, sweep, sweep_spec, [ImportBatch(specs, keys, values)], replace=replace)


def import_batches(store: Any, sweep: str, sweep_spec: Mapping[str, Any], batches: Iterable[ImportBatch], *,
                   replace: bool = False) -> ImportResult:
    """:func:`import_runs` of a stream: each batch is written as it comes (memory: one batch, not
    the import), all of them in one transaction, which also rolls back whatever the stream raises
    (its validation errors, a KeyboardInterrupt). The batches must not give a (run, metric, step)
    twice: a later one would merge over the first.

    After a batch that holds values differing from stored ones, the rest is still read (and the
    transaction rolled back at the end), so the ValueConflictError names the first such row of the
    whole import and counts all of them, unless the stream raises another error first.
    """
    if not sweep or len(sweep) > 200:
        raise InvalidSpecError("a sweep name must have 1 to 200 characters")
    with store.session_scope() as s:
        sweep_id = _sweep_id(s, sweep, sweep_spec)
        raw = s.connection().connection.dbapi_connection
        run_ids: list[int] = []
        key_ids: list[int] = []
        keys: list[MetricKey] = []
        new_runs = values = replaced = differing = 0
        first: Optional[tuple[int, chunks.Conflict]] = None
        try:
            for batch in batches:
                if batch.specs:
                    ids, new = _run_ids(s, sweep_id, batch.specs)
                    run_ids += ids
                    new_runs += len(new)
                if batch.keys:
                    by_key = _metric_ids(s, batch.keys)
                    keys += batch.keys
                    key_ids += [by_key[k] for k in batch.keys]
                staged = _staged(batch.values, run_ids, key_ids)
                values += staged.height
                n, conflict, count = _write(store.backend, raw, staged, replace=replace)
                replaced += n
                differing += count
                if conflict is not None and first is None:  # batches come in file order
                    first = conflict
            if first is not None:
                row, c = first
                key = keys[key_ids.index(c.metric_id)]
                raise ValueConflictError(row, key, c.step, c.stored, c.incoming, differing)
            diverged = _finish(s, store.backend, raw, run_ids)
        except GammadbError:
            raise
        except Exception as exc:  # driver errors of either backend, raised by the raw cursor
            if "operational" in type(exc).__name__.lower():
                raise _unavailable(store, exc) from None
            raise GammadbError(f"import failed: {_one_line(exc)}") from None
    store.cache_loss_buckets(run_ids)  # as at a run's end; after the commit, best effort
    return ImportResult(run_ids=run_ids, new_runs=new_runs, values=values, replaced=replaced, diverged=diverged)


def _sweep_id(s: Session, name: str, spec: Mapping[str, Any]) -> int:
    from gammadb import code_version

    sweep_id = s.scalar(select(Sweep.id).where(Sweep.name == name))
    if sweep_id is None:
        row = Sweep(name=name, spec=dict(spec), code_version=code_version())
        s.add(row)
        s.flush()
        sweep_id = row.id
    return sweep_id


def _run_ids(s: Session, sweep_id: int, specs: Sequence[RunSpec]) -> tuple[list[int], list[int]]:
    """The ids of the runs of ``specs`` (by point key), and of those among them created now (pending)."""
    keys = [spec.point_key() for spec in specs]
    found = _ids_by_key(s, sweep_id, keys)
    missing = {k: spec for k, spec in zip(keys, specs) if k not in found}
    if missing:
        s.execute(insert(Run), [
            dict(sweep_id=sweep_id, point_key=k, model=spec.model, dataset=spec.dataset, loss_fn=spec.loss_fn,
                 optimizer=spec.optimizer, depth=spec.depth, width=spec.width, batch_size=spec.batch_size,
                 gamma=spec.gamma, eta=spec.eta, seed=spec.seed, dtype=spec.dtype, device=spec.device,
                 config=spec.config, status=RunStatus.PENDING, steps_planned=spec.steps_planned, steps_done=0)
            for k, spec in missing.items()
        ])
        for chunk in _chunks(list(missing), 500):
            found.update(_ids_by_key(s, sweep_id, chunk))
    return [found[k] for k in keys], [found[k] for k in missing]


def _ids_by_key(s: Session, sweep_id: int, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in _chunks(list(keys), 500):
        q = select(Run.point_key, Run.id).where(Run.sweep_id == sweep_id, Run.point_key.in_(chunk))
        out.update({k: i for k, i in s.execute(q)})
    return out


def _metric_ids(s: Session, keys: Sequence[MetricKey]) -> dict[MetricKey, int]:
    """Ids of the series, created inside the import's transaction (so a failed import adds none)."""
    known = ensure_metric_ids(s, keys)
    return {k: known[k] for k in keys}


def _staged(values: pl.DataFrame, run_ids: Sequence[int], key_ids: Sequence[int]) -> pl.DataFrame:
    """A batch's values with store ids: row, run_id, metric_id, step, value."""
    runs = np.asarray(run_ids, dtype=np.int64)
    metrics = np.asarray(key_ids, dtype=np.int64)
    return pl.DataFrame({
        "row": values["row"].cast(pl.Int64),
        "run_id": runs[values["run_idx"].cast(pl.Int64).to_numpy()],
        "metric_id": metrics[values["key_idx"].cast(pl.Int64).to_numpy()],
        "step": values["step"].cast(pl.Int64), "value": values["value"].cast(pl.Float64),
    })


def _write(backend: str, raw: Any, staged: pl.DataFrame, *, replace: bool
           ) -> tuple[int, Optional[tuple[int, chunks.Conflict]], int]:
    """Merge a batch into the stored series. Returns how many stored values it overwrote with
    another value; and, where ``replace`` is off and some differ (then nothing is written), the
    batch's first such row with its conflict, and how many differ."""
    if staged.is_empty():
        return 0, None, 0
    updates = chunks.group_arrays(staged["run_id"].to_numpy(), staged["metric_id"].to_numpy(),
                                  staged["step"].to_numpy(), staged["value"].to_numpy())
    conflicts: list[chunks.Conflict] = []
    replaced = chunks.write_series(backend, raw, updates, replace=replace, conflicts=conflicts)
    if not conflicts:
        return replaced, None, 0
    first = None
    for c in conflicts:  # the file's first row among the first conflicting step of each series
        hit = staged.filter((pl.col("run_id") == c.run_id) & (pl.col("metric_id") == c.metric_id)
                            & (pl.col("step") == c.step))
        row = int(hit["row"].max()) if hit.height else 0
        if first is None or row < first[0]:
            first = (row, c)
    return 0, first, sum(x.count for x in conflicts)


def _finish(s: Session, backend: str, raw: Any, run_ids: Sequence[int]) -> int:
    """Status, steps and summary of each run over all its stored steps. Returns how many diverged."""
    loss_id = s.scalar(select(Metric.id).where(Metric.name == LOSS, Metric.layer == 0))
    now = utcnow()
    diverged = 0
    for chunk, last in _by_size(backend, raw, list(dict.fromkeys(run_ids))):
        planned = dict(s.execute(select(Run.id, Run.steps_planned).where(Run.id.in_(chunk))).all())
        got = chunks.read_series(backend, raw, chunk, [loss_id if loss_id is not None else -1])
        loss = pl.DataFrame({"run_id": got["run_id"], "step": got["step"], "value": got["value"]})
        first_bad = dict(loss.filter(~pl.col("value").is_finite()).group_by("run_id")
                         .agg(pl.col("step").min()).iter_rows())
        ends = []
        for run_id in chunk:
            at: Optional[int] = first_bad.get(run_id)
            done = int(last.get(run_id) or 0)
            diverged += at is not None
            ends.append({"id": run_id, "status": RunStatus.DIVERGED if at is not None else RunStatus.COMPLETED,
                         "steps_done": done, "steps_planned": max(done, planned[run_id]), "diverged_at": at,
                         "error": None, "finished_at": now, "heartbeat_at": now})
        s.execute(update(Run), ends)
        _replace_summaries(s, summarize_losses(loss, chunk), now)
    return diverged


def _by_size(backend: str, raw: Any, run_ids: list[int]) -> Iterator[tuple[list[int], dict[int, int]]]:
    """The runs in chunks of at most 400 runs and about FINISH_VALUES stored steps (a run's last
    step bounds its loss values), each with the runs' last stored steps."""
    last = chunks.last_steps(backend, raw, run_ids)
    for chunk in chunks.by_length(run_ids, last, max_runs=400, max_values=FINISH_VALUES):
        yield chunk, {r: last[r] for r in chunk if r in last}


def _nan(v: Optional[float]) -> float:
    return math.nan if v is None else float(v)
