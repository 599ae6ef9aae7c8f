"""The batched, background writer of per-step metric values.

Training calls :meth:`MetricWriter.log` at every step; that only appends tuples to a list. A background
thread commits the buffer every ``batch_rows`` values or ``flush_seconds`` seconds, whichever comes
first: it groups the values by series and merges them into the chunked layout
(:mod:`gammadb.store.chunks`: a blob of float64 per run of up to 1,024 steps), a few large writes per
batch instead of a B-tree insert per value. An ensemble's :meth:`MetricWriter.log_block` hands over one
(members x metrics) array per step, so a batch is reshaped, not looped over, in Python. Each commit is
one transaction that also moves the runs' progress and heartbeats, so after a crash the store holds
whole batches and ``steps_done`` agrees with what is stored. A re-written step overwrites, never
duplicates.

Backpressure: when training produces rows faster than the store commits them (a large ensemble on a
GPU), the queue stops at ``max_backlog_rows`` and ``log`` waits for the next commit, so memory stays
bounded and training runs at the store's pace; ``seconds_waiting`` says how long it waited.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from gammadb.errors import GammadbError, StoreUnavailableError
from gammadb.metrics import MetricKey
from gammadb.store import chunks
from gammadb.store.chunks import CHUNK_STEPS
from gammadb.store.engine import transient

Row = tuple[int, int, int, Optional[float]]  # run_id, metric_id, step, value


class _Block:
    """Consecutive ensemble steps of one (members, metrics) layout: steps (T,) and values (T, K, M)."""

    __slots__ = ("run_ids", "metric_ids", "steps", "values")

    def __init__(self, run_ids: tuple[int, ...], metric_ids: tuple[int, ...]) -> None:
        self.run_ids, self.metric_ids = run_ids, metric_ids
        self.steps: list[int] = []
        self.values: list[np.ndarray] = []


class MetricWriter:
    """Buffer per-step values and commit them in batches from a background thread.

    Use as a context manager (flushes on exit, also on exceptions and KeyboardInterrupt). Errors in
    the background thread are raised at the next ``log``/``flush``/``close``.
    """

    def __init__(self, store: Any, *, batch_rows: int = 500_000, flush_seconds: float = 2.0,
                 background: bool = True, max_backlog_rows: int | None = None) -> None:
        self._store = store
        self._backend = store.backend
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.max_backlog_rows = max_backlog_rows if max_backlog_rows is not None else 8 * batch_rows
        if self.max_backlog_rows < batch_rows:
            raise ValueError("max_backlog_rows must be >= batch_rows")
        self._buf: list[Any] = []  # lists of Row and _Block, in the order logged
        self._pending = 0  # values queued
        self._block_progress: dict[tuple[int, ...], int] = {}
        self._progress: dict[int, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._flush_now = False
        self._ready = False  # a batch is due (see _queue)
        self._closed = False
        self._error: Optional[BaseException] = None
        self._conn: Any = None
        self.rows_written = 0
        self.seconds_in_db = 0.0
        self.max_backlog = 0
        self.seconds_waiting = 0.0  # producers blocked on a full queue
        self._ids: dict[MetricKey, int] = {}
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="gammadb-writer", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ producer side
    def log(self, run_id: int, step: int, values: Mapping[MetricKey, float]) -> None:
        """Queue one step's values of one run. NaN and +-inf are kept (NaN is stored as NULL on SQLite)."""
        ids = self._ids
        try:
            rows = [(run_id, ids[k], step, v) for k, v in values.items()]
        except KeyError:
            ids.update(self._store.metric_ids(values))
            rows = [(run_id, ids[k], step, v) for k, v in values.items()]
        self.write_rows(rows, progress=(run_id, step))

    def log_block(self, step: int, run_ids: Sequence[int], keys: Sequence[MetricKey],
                  rows: Iterable[Sequence[float]]) -> None:
        """Queue one step of many runs at once (an ensemble): ``rows[j]`` holds run ``run_ids[j]``'s
        values of ``keys``. One lock and no per-run dicts: the fast path for large ensembles."""
        ids = self._ids
        if not all(k in ids for k in keys):
            ids.update(self._store.metric_ids(keys))
        metric_ids = tuple(ids[k] for k in keys)
        values = np.array(rows, dtype=np.float64)  # a copy: the caller may reuse its buffer
        if values.shape != (len(run_ids), len(metric_ids)):
            raise ValueError(f"log_block: rows of shape {values.shape}, expected ({len(run_ids)}, {len(metric_ids)})")
        self._queue(None, (), block=(step, tuple(run_ids), metric_ids, values))

    def write_rows(self, rows: Iterable[Row], *, progress: tuple[int, int] | None = None) -> None:
        """Queue raw (run_id, metric_id, step, value) rows; ``progress`` = (run_id, steps_done)."""
        self._queue(rows, [progress] if progress is not None else [])

    def _queue(self, rows: Optional[Iterable[Row]], progress: Sequence[tuple[int, int]],
               block: Optional[tuple[int, tuple[int, ...], tuple[int, ...], np.ndarray]] = None) -> None:
        if self._error is not None:
            self._raise()
        if self._closed:
            raise GammadbError("metric writer is closed")
        with self._lock:
            if self._thread is not None and self._pending >= self.max_backlog_rows:
                t0 = time.perf_counter()
                while self._pending >= self.max_backlog_rows and self._error is None and self._thread.is_alive():
                    self._wake.notify()  # commit now, not at the next deadline
                    self._idle.wait(0.5)
                self.seconds_waiting += time.perf_counter() - t0
            if self._error is not None:
                self._raise()
            buf = self._buf
            if block is not None:
                step, run_ids, metric_ids, values = block
                last = buf[-1] if buf else None
                if not (isinstance(last, _Block) and last.run_ids == run_ids and last.metric_ids == metric_ids):
                    last = _Block(run_ids, metric_ids)
                    buf.append(last)
                last.steps.append(step)
                last.values.append(values)
                self._pending += values.size
                self._block_progress[run_ids] = step  # each member's steps_done, applied at the commit
            if rows is not None:
                rows = list(rows)
                if buf and isinstance(buf[-1], list):
                    buf[-1].extend(rows)
                else:
                    buf.append(rows)
                self._pending += len(rows)
            for run_id, steps_done in progress:
                self._progress[run_id] = steps_done
            n = self._pending
            if n > self.max_backlog:
                self.max_backlog = n
            # A full batch is committed when an ensemble's step ends a chunk window (so a steady
            # stream writes each chunk once, never re-reading it), or at 4 batches whatever the step.
            ready = n >= self.batch_rows and (block is None or (block[0] + 1) % CHUNK_STEPS == 0
                                              or n >= 4 * self.batch_rows)
            self._ready = self._ready or ready
            if ready and self._thread is not None:
                self._wake.notify()
        if self._thread is None and ready:
            self._flush_once()

    def set_progress(self, run_id: int, steps_done: int) -> None:
        """Record a run's progress; committed with the next batch together with a heartbeat."""
        with self._lock:
            self._progress[run_id] = steps_done

    def flush(self) -> None:
        """Block until everything queued so far is committed."""
        if self._thread is None:
            self._flush_once()
        else:
            with self._lock:
                self._flush_now = True
                self._wake.notify()
                while (self._buf or self._progress or self._block_progress or self._busy) and self._error is None \
                        and self._thread.is_alive():
                    self._idle.wait(0.5)
        if self._error is not None:
            self._raise()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._wake.notify()
            if self._thread is not None:
                self._thread.join(timeout=60)
            self._drop_connection()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Flush on success, on exceptions and on KeyboardInterrupt alike: what was logged is kept.
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                pass  # the original exception matters more

    # ------------------------------------------------------------------ consumer side
    def _loop(self) -> None:
        while True:
            with self._lock:
                deadline = time.monotonic() + self.flush_seconds
                while not self._closed and not self._flush_now and not self._ready:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                self._flush_now = False
                closing = self._closed
            try:
                self._flush_once()
            except BaseException as exc:  # surfaced in the producer thread
                self._error = exc
                with self._lock:
                    self._idle.notify_all()
                return
            with self._lock:
                self._idle.notify_all()
                if closing and not self._buf and not self._progress and not self._block_progress:
                    return

    def _flush_once(self) -> None:
        with self._lock:
            rows, self._buf = self._buf, []
            n_values, self._pending = self._pending, 0
            self._ready = False
            for run_ids, step in self._block_progress.items():
                for run_id in run_ids:  # a later per-run log() may have moved a member further
                    if self._progress.get(run_id, -1) < step:
                        self._progress[run_id] = step
            self._block_progress = {}
            progress, self._progress = self._progress, {}
            self._busy = True
            self._idle.notify_all()  # a producer blocked on a full queue may go on
        try:
            if not rows and not progress:
                return
            t0 = time.perf_counter()
            for attempt in range(3):
                try:
                    if self._backend == "sqlite":
                        self._write_sqlite(rows, progress)
                    else:
                        self._write_pg(rows, progress)
                    break
                except GammadbError:
                    raise
                except Exception as exc:
                    self._drop_connection()
                    if attempt == 2 or not transient(exc):
                        raise StoreUnavailableError(
                            f"writing metrics to {self._store.display_url} failed: {str(exc).strip().splitlines()[0]}"
                        ) from None
                    time.sleep(0.5 * (attempt + 1))  # reconnect and retry the whole batch
            self.seconds_in_db += time.perf_counter() - t0
            self.rows_written += n_values
        finally:
            with self._lock:
                self._busy = False

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._store.raw_connection()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def _write_sqlite(self, items: list[Any], progress: dict[int, int]) -> None:
        conn = self._connection()
        updates = _series(items)
        now = _sqlite_now()
        conn.execute("BEGIN IMMEDIATE")
        try:
            chunks.write_series("sqlite", conn, updates)
            if progress:
                conn.executemany(
                    "UPDATE runs SET steps_done = ?, heartbeat_at = ? WHERE id = ?",
                    [(s, now, r) for r, s in progress.items()],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_pg(self, items: list[Any], progress: dict[int, int]) -> None:
        conn = self._connection()
        updates = _series(items)
        with conn.transaction():
            chunks.write_series("postgresql", conn, updates)
            if progress:
                now = dt.datetime.now(dt.timezone.utc)
                with conn.cursor() as cur:
                    cur.executemany(
                        "UPDATE runs SET steps_done = %s, heartbeat_at = %s WHERE id = %s",
                        [(s, now, r) for r, s in progress.items()],
                    )

    def _raise(self) -> None:
        err = self._error
        if isinstance(err, GammadbError):
            raise err
        raise StoreUnavailableError(f"metric writer failed: {err}")


def _series(items: list[Any]) -> dict[tuple[int, int], chunks.Series]:
    """A batch (lists of rows and ensemble blocks, in the order logged) as one sorted series per
    (run, metric); a step logged twice keeps its last value."""
    out: dict[tuple[int, int], chunks.Series] = {}

    def add(key: tuple[int, int], series: chunks.Series) -> None:
        old = out.get(key)
        out[key] = series if old is None else chunks.merge(old, series)

    for item in items:
        if isinstance(item, _Block):
            steps = np.asarray(item.steps, dtype=np.int64)
            values = np.stack(item.values)  # (T, K, M)
            if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):  # a step re-logged: once per block
                kept = chunks.last_wins(steps, np.arange(steps.size, dtype=np.float64))
                steps, values = kept.steps, values[kept.values.astype(np.int64)]
            # (T, K, M) -> (K, M, T): each series contiguous, one copy for the whole block.
            cube = np.ascontiguousarray(values.transpose(1, 2, 0))
            for k, run_id in enumerate(item.run_ids):
                for j, metric_id in enumerate(item.metric_ids):
                    add((run_id, metric_id), chunks.Series(steps, cube[k, j]))
        else:
            for key, series in chunks.group_rows(item).items():
                add(key, series)
    return out


def _sqlite_now() -> str:
    # The format SQLAlchemy's SQLite DateTime reads back.
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")

