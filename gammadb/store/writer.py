"""The batched, background writer of per-step metric values.

Training calls :meth:`MetricWriter.log` at every step; that only appends tuples to a list. A background
thread commits the buffer every ``batch_rows`` rows or ``flush_seconds`` seconds, whichever comes
first, through the driver's bulk path (sqlite3 ``executemany`` under WAL; PostgreSQL ``COPY`` into a
staging table, then one ``INSERT ... ON CONFLICT``). Each commit is one transaction that also moves the
runs' progress and heartbeats, so after a crash the store holds whole batches and ``steps_done``
agrees with what is stored. A re-written step overwrites (upsert), never duplicates.

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

from gammadb.errors import GammadbError, StoreUnavailableError
from gammadb.metrics import MetricKey

Row = tuple[int, int, int, Optional[float]]  # run_id, metric_id, step, value

SQLITE_UPSERT = (
    "INSERT INTO metric_values (run_id, metric_id, step, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (run_id, metric_id, step) DO UPDATE SET value = excluded.value"
)
PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_values "
    "(run_id int4, metric_id int2, step int8, value float8) ON COMMIT DELETE ROWS"
)
PG_MERGE = (
    "INSERT INTO metric_values (run_id, metric_id, step, value) "
    "SELECT run_id, metric_id, step, value FROM stage_values "
    "ON CONFLICT (run_id, metric_id, step) DO UPDATE SET value = EXCLUDED.value"
)


class MetricWriter:
    """Buffer per-step values and commit them in batches from a background thread.

    Use as a context manager (flushes on exit, also on exceptions and KeyboardInterrupt). Errors in
    the background thread are raised at the next ``log``/``flush``/``close``.
    """

    def __init__(self, store: Any, *, batch_rows: int = 20_000, flush_seconds: float = 2.0,
                 background: bool = True, max_backlog_rows: int | None = None) -> None:
        self._store = store
        self._backend = store.backend
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.max_backlog_rows = max_backlog_rows if max_backlog_rows is not None else 50 * batch_rows
        if self.max_backlog_rows < batch_rows:
            raise ValueError("max_backlog_rows must be >= batch_rows")
        self._buf: list[Row] = []
        self._progress: dict[int, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._busy = False
        self._flush_now = False
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
        metric_ids = [ids[k] for k in keys]
        out = [(run_id, m, step, v) for run_id, row in zip(run_ids, rows) for m, v in zip(metric_ids, row)]
        self._queue(out, [(run_id, step) for run_id in run_ids])

    def write_rows(self, rows: Iterable[Row], *, progress: tuple[int, int] | None = None) -> None:
        """Queue raw (run_id, metric_id, step, value) rows; ``progress`` = (run_id, steps_done)."""
        self._queue(rows, [progress] if progress is not None else [])

    def _queue(self, rows: Iterable[Row], progress: Sequence[tuple[int, int]]) -> None:
        if self._error is not None:
            self._raise()
        if self._closed:
            raise GammadbError("metric writer is closed")
        with self._lock:
            if self._thread is not None and len(self._buf) >= self.max_backlog_rows:
                t0 = time.perf_counter()
                while len(self._buf) >= self.max_backlog_rows and self._error is None and self._thread.is_alive():
                    self._wake.notify()  # commit now, not at the next deadline
                    self._idle.wait(0.5)
                self.seconds_waiting += time.perf_counter() - t0
            if self._error is not None:
                self._raise()
            self._buf.extend(rows)
            for run_id, steps_done in progress:
                self._progress[run_id] = steps_done
            n = len(self._buf)
            if n > self.max_backlog:
                self.max_backlog = n
            if n >= self.batch_rows and self._thread is not None:
                self._wake.notify()
        if self._thread is None and n >= self.batch_rows:
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
                while (self._buf or self._progress or self._busy) and self._error is None \
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
                while not self._closed and not self._flush_now and len(self._buf) < self.batch_rows:
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
                if closing and not self._buf and not self._progress:
                    return

    def _flush_once(self) -> None:
        with self._lock:
            rows, self._buf = self._buf, []
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
                    if attempt == 2 or not _transient(exc):
                        raise StoreUnavailableError(
                            f"writing metrics to {self._store.display_url} failed: {str(exc).strip().splitlines()[0]}"
                        ) from None
                    time.sleep(0.5 * (attempt + 1))  # reconnect and retry the whole batch
            self.seconds_in_db += time.perf_counter() - t0
            self.rows_written += len(rows)
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

    def _write_sqlite(self, rows: list[Row], progress: dict[int, int]) -> None:
        conn = self._connection()
        # No per-row Python work here (it would compete with training for the GIL): executemany
        # applies rows in order, so a step re-written later in the batch wins, and SQLite binds a
        # NaN as NULL by itself, the documented encoding of NaN in metric_values.
        data = rows
        now = _sqlite_now()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(SQLITE_UPSERT, data)
            if progress:
                conn.executemany(
                    "UPDATE runs SET steps_done = ?, heartbeat_at = ? WHERE id = ?",
                    [(s, now, r) for r, s in progress.items()],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_pg(self, rows: list[Row], progress: dict[int, int]) -> None:
        conn = self._connection()
        with conn.transaction():
            cur = conn.cursor()
            if rows:
                cur.execute(PG_STAGE)
                with cur.copy("COPY stage_values (run_id, metric_id, step, value) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int4", "int2", "int8", "float8"])
                    for (r, m, s), v in _latest(rows):
                        cp.write_row((r, m, s, v))
                cur.execute(PG_MERGE)
            if progress:
                now = dt.datetime.now(dt.timezone.utc)
                cur.executemany(
                    "UPDATE runs SET steps_done = %s, heartbeat_at = %s WHERE id = %s",
                    [(s, now, r) for r, s in progress.items()],
                )

    def _raise(self) -> None:
        err = self._error
        if isinstance(err, GammadbError):
            raise err
        raise StoreUnavailableError(f"metric writer failed: {err}")


def _latest(rows: list[Row]) -> list[tuple[tuple[int, int, int], Optional[float]]]:
    """The last value logged for each (run, metric, step), in key order: the PostgreSQL path's
    staging table feeds one INSERT ... ON CONFLICT, which cannot touch one key twice, so a step
    re-written within a batch must be reduced to its last value first. (SQLite's executemany applies
    rows in order and needs no such pass.)"""
    latest = {(r, m, s): v for r, m, s, v in rows}
    return sorted(latest.items())


def _sqlite_now() -> str:
    # The format SQLAlchemy's SQLite DateTime reads back.
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("terminat", "connection", "closed", "server", "locked", "busy"))
