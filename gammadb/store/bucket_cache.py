"""The cache of bucketed series: ``series_buckets`` rows, valid while their version is their run's.

A run's version (``run_versions``) is bumped by triggers on every write of its series' chunks
(migration 0005), in the writer's own transaction. A reader therefore reads the versions *before*
the series it reduces: whatever it then reads is at least as new as the version it stores with the
result, so a cache row can be older than it claims (it is recomputed at the next read) but never
newer, and a row whose version differs from the run's current one is never served. The blobs'
layout and the bucketing maths belong to :mod:`gammadb.buckets`.

Wherever a run's summary is written (the run's end, an import, ``gammadb db summarize``), its training
loss is bucketed on the 40-a-decade grid and cached too (:meth:`BucketCacheMixin.cache_loss_buckets`):
the grid the report, ``plot curves`` and the plateau analysis read for every run, so the first
command after a sweep does not read and bucket every value first.

Filling the cache is best effort: a read-only store, a store locked by a writer for more than a
moment, or a run deleted meanwhile only means the next read computes again; it is never an error.
Runs still running are not cached (their next chunk would make the row stale at once).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from gammadb.buckets import BUCKET_LAYOUT, DEFAULT_PER_DECADE, bucket_frame, pack_buckets
from gammadb.errors import GammadbError
from gammadb.metrics import LOSS
from gammadb.records import RunStatus
from gammadb.store.chunks import by_length, last_steps
from gammadb.store.engine import _chunks

_IN = 900  # ids per IN list (SQLite's default limit of bound parameters is 999 on old builds)
CACHE_WRITE_WAIT_MS = 250  # how long a cache write waits for a writer's lock before giving up
_FILL_RUNS = 500  # runs bucketed at a time by cache_loss_buckets
FILL_VALUES = 2_000_000  # loss values bucketed at a time by cache_loss_buckets (memory: the frame read, 24 B a
# value, and the bucketing, 25 B a value more, measured on 2 M values: about 100 MB a slice)


class BucketCacheMixin:
    """Reads and writes of ``series_buckets`` for :class:`gammadb.store.Store`."""

    read_only: bool

    def cache_loss_buckets(self, run_ids: Sequence[int]) -> int:
        """Bucket the training loss of those of ``run_ids`` that have ended and are not cached at
        their current version, on the 40-a-decade grid, and cache it, a slice of runs at a time
        (about :data:`FILL_VALUES` values; a longer run is left to its first read). Best effort,
        like every cache write: nothing on a read-only store, and a store that refuses (locked, a
        series it cannot decode) only leaves the rest to the next read. Returns how many runs it
        cached."""
        loss_id = self.metric_id(LOSS, 0)
        if loss_id is None or self.read_only or not run_ids:
            return 0
        cached = 0
        try:
            for part in self._loss_slices(sorted({int(r) for r in run_ids})):
                _, versions = self.cached_buckets(part, loss_id, DEFAULT_PER_DECADE, BUCKET_LAYOUT)  # before the series
                if not versions:
                    continue
                frame = bucket_frame(self.values_frame(list(versions), loss_id), DEFAULT_PER_DECADE)
                packed = pack_buckets(frame)
                rows = [(r, v, packed[r]) for r, v in versions.items() if r in packed]
                if self.cache_buckets(loss_id, DEFAULT_PER_DECADE, BUCKET_LAYOUT, rows):
                    cached += len(rows)
        except Exception:  # derived data: whatever fails here only leaves the rest to the next read,
            pass           # which computes the same and says what is wrong, if anything is
        return cached

    def _loss_slices(self, run_ids: Sequence[int], *, keep_long: bool = False) -> Iterator[list[int]]:
        """``run_ids`` in slices of at most :data:`_FILL_RUNS` runs and about :data:`FILL_VALUES`
        stored steps (a run's last step bounds its loss values), so a caller holds one slice's
        values at a time. A run longer than that on its own is a slice of its own with
        ``keep_long``, else left out (the cache leaves it to its first read: a run's end must not
        hold a huge series whole in memory for it)."""
        if not run_ids:
            return
        if keep_long and len(run_ids) == 1:  # a slice whatever its length: no need to ask
            yield [run_ids[0]]
            return
        conn = self.raw_connection(read_only=True)
        try:
            last = last_steps(self.backend, conn, run_ids)
        finally:
            conn.close()
        yield from by_length(run_ids, last, max_runs=_FILL_RUNS, max_values=FILL_VALUES, keep_long=keep_long)

    def cached_buckets(self, run_ids: Sequence[int], metric_id: int, per_decade: int,
                       layout: int) -> tuple[dict[int, bytes], dict[int, int]]:
        """The cached blobs of ``run_ids`` on this grid that are current ({run_id: blob}), and the
        current version of each other run whose result may be cached once computed ({run_id:
        version}: runs with a stored series that are not running). Read before the series itself.
        A cache the database cannot read (its tables dropped by hand) reads as empty: the caller
        computes, as it would without a cache."""
        p = "?" if self.backend == "sqlite" else "%s"
        hits: dict[int, bytes] = {}
        versions: dict[int, int] = {}
        conn = self.raw_connection(read_only=True)
        try:
            cur = conn.cursor(binary=True) if self.backend == "postgresql" else conn.cursor()
            for part in _chunks(sorted({int(r) for r in run_ids}), _IN):
                cur.execute(
                    "SELECT v.run_id, v.version, r.status, "
                    f"CASE WHEN b.version = v.version AND b.layout = {p} THEN b.buckets END "
                    "FROM run_versions v JOIN runs r ON r.id = v.run_id "
                    f"LEFT JOIN series_buckets b ON b.run_id = v.run_id AND b.metric_id = {p} AND b.per_decade = {p} "
                    f"WHERE v.run_id IN ({', '.join([p] * len(part))})",
                    (layout, metric_id, per_decade, *part))
                for run_id, version, status, blob in cur.fetchall():
                    if blob is not None:
                        hits[int(run_id)] = bytes(blob)
                    elif status != RunStatus.RUNNING.value:
                        versions[int(run_id)] = int(version)
            cur.close()
        except _driver_errors():
            return {}, {}
        finally:
            conn.close()
        return hits, versions

    def cache_buckets(self, metric_id: int, per_decade: int, layout: int,
                      rows: Sequence[tuple[int, int, bytes]]) -> bool:
        """Store ``rows`` (run_id, version, blob) in one transaction, keeping a newer row another
        reader stored meanwhile. Best effort: False (and nothing written) where the store refuses."""
        if not rows or self.read_only:
            return False
        postgres = self.backend == "postgresql"
        p = "%s" if postgres else "?"
        sql = ("INSERT INTO series_buckets (run_id, metric_id, per_decade, layout, version, buckets) "
               f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (run_id, metric_id, per_decade) DO UPDATE "
               "SET layout = excluded.layout, version = excluded.version, buckets = excluded.buckets "
               "WHERE series_buckets.version <= excluded.version")
        params = [(int(r), metric_id, per_decade, layout, int(v), blob) for r, v, blob in rows]
        try:
            conn = self.raw_connection()
        except GammadbError:  # the store's next real use says why, if it matters
            return False
        try:
            if postgres:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{CACHE_WRITE_WAIT_MS}ms'")
                    conn.cursor().executemany(sql, params)
            else:
                conn.execute(f"PRAGMA busy_timeout = {CACHE_WRITE_WAIT_MS}")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(sql, params)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return True
        except _driver_errors():
            return False
        finally:
            conn.close()


def _driver_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)
