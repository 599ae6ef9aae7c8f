"""The chunked layout of per-step series: one row per (run, metric, run of consecutive steps).

A row of ``metric_chunks`` holds the values of steps ``first_step .. first_step + n - 1`` of one
series as one blob of little-endian float64 (NaN and +-inf as they are, on both backends). Rows never
cross an aligned window of :data:`CHUNK_STEPS` steps, so a series logged every step is one row per
1,024 steps (8 KiB of values: about 8.5 bytes a value on SQLite, against 22 for a row per value), and
a series logged on a cadence (every 100 steps) is one row per value, as before.

Why this layout (measured, see ``benchmarks/bench_store_layout.py``): a row per value caps the
writer at the B-tree's insert rate (0.2 M values/s on SQLite); a blob per chunk moves the same
values as a few large writes (> 5 M values/s) and reads back with one ``numpy.frombuffer``.

Writes merge: a batch reads the rows of the windows it touches, merges its steps into them (a
re-written step replaces the old value) and replaces those rows, inside the caller's transaction.
The SQL views (``metric_values``, ``loss_curves``, ``metric_series``) decode the blobs in plain SQL
(:func:`value_sql`), so hand-written queries see one row per value as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

CHUNK_STEPS = 1024
VALUE_DTYPE = np.dtype("<f8")
_EMPTY_I = np.empty(0, dtype=np.int64)
_EMPTY_F = np.empty(0, dtype=np.float64)


@dataclasses.dataclass
class Series:
    """One series' steps (int64, ascending, unique) and values (float64)."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A step the store holds with another value than the one being written."""

    run_id: int
    metric_id: int
    step: int
    stored: float
    incoming: float
    count: int  # conflicting steps of this series


def encode(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=VALUE_DTYPE).tobytes()


def last_wins(steps: np.ndarray, values: np.ndarray) -> Series:
    """Sorted by step; where a step repeats, its last value (in the given order) is kept."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if steps.size < 2 or bool(np.all(steps[1:] > steps[:-1])):
        return Series(steps, values)
    order = np.argsort(steps, kind="stable")
    s, v = steps[order], values[order]
    keep = np.append(s[1:] != s[:-1], True)
    return Series(s[keep], v[keep])


def merge(old: Series, new: Series) -> Series:
    """``old`` with ``new`` written over it (both sorted and unique): new values win."""
    if old.steps.size == 0:
        return new
    if new.steps.size == 0:
        return old
    if old.steps[-1] < new.steps[0]:  # the common case: an append
        return Series(np.concatenate([old.steps, new.steps]), np.concatenate([old.values, new.values]))
    return last_wins(np.concatenate([old.steps, new.steps]), np.concatenate([old.values, new.values]))


def differing(old: Series, new: Series) -> np.ndarray:
    """Indexes into ``new`` of the steps ``old`` holds with another value (NaN equals NaN)."""
    if old.steps.size == 0 or new.steps.size == 0:
        return _EMPTY_I
    common, i_old, i_new = np.intersect1d(old.steps, new.steps, assume_unique=True, return_indices=True)
    a, b = old.values[i_old], new.values[i_new]
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return i_new[~same]


def split(series: Series) -> list[tuple[int, int, bytes]]:
    """The rows ``(first_step, n, blob)`` of a series: runs of consecutive steps within one window."""
    steps = series.steps
    if steps.size == 0:
        return []
    blob = encode(series.values)
    first, last = int(steps[0]), int(steps[-1])
    if last - first == steps.size - 1:  # consecutive steps (the common case): cut at window starts only
        starts = [first, *range((first // CHUNK_STEPS + 1) * CHUNK_STEPS, last + 1, CHUNK_STEPS)]
        ends = [*starts[1:], last + 1]
        return [(a, b - a, blob[8 * (a - first):8 * (b - first)]) for a, b in zip(starts, ends)]
    cuts = np.flatnonzero((np.diff(steps) != 1) | (np.diff(steps // CHUNK_STEPS) != 0)) + 1
    bounds = np.concatenate([[0], cuts, [steps.size]])
    return [(int(steps[a]), int(b - a), blob[8 * a:8 * b]) for a, b in zip(bounds[:-1], bounds[1:])]


def expand(first_steps: Sequence[int], ns: Sequence[int], blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The (steps, values) of rows: steps int64, values float64 (one copy of the blobs, no per-value
    Python)."""
    if len(blobs) == 0:
        return _EMPTY_I, _EMPTY_F
    ns_a = np.asarray(ns, dtype=np.int64)
    first = np.asarray(first_steps, dtype=np.int64)
    values = np.frombuffer(b"".join(blobs), dtype=VALUE_DTYPE)
    # The steps as one running sum, in one array: +1 within a row and, at a row's first value, the
    # jump from the previous row's last step (any sign: rows of other runs follow). Half the time of
    # an arange plus a repeat of the rows' offsets, and half the fresh memory (5 M values: 8 vs 17 ms).
    steps = np.ones(values.size, dtype=np.int64)
    steps[0] = first[0]
    if first.size > 1:
        steps[np.cumsum(ns_a[:-1])] = first[1:] - (first[:-1] + ns_a[:-1] - 1)
    np.cumsum(steps, out=steps)
    return steps, values


def window_range(steps: np.ndarray) -> tuple[int, int]:
    """[lo, hi): the aligned windows that hold ``steps`` (sorted)."""
    return int(steps[0] // CHUNK_STEPS * CHUNK_STEPS), int((steps[-1] // CHUNK_STEPS + 1) * CHUNK_STEPS)


# ---------------------------------------------------------------------------------------------- writes
_P = {"sqlite": "?", "postgresql": "%s"}


def write_series(backend: str, conn: Any, updates: dict[tuple[int, int], Series], *,
                 replace: bool = True, conflicts: Optional[list[Conflict]] = None) -> int:
    """Merge ``updates`` ((run_id, metric_id) -> sorted unique series) into ``metric_chunks`` through
    the raw DB-API connection ``conn``, inside the caller's transaction. Returns the number of
    stored values that were overwritten with another value.

    With ``replace=False`` nothing is changed where a stored step differs: each such series adds a
    :class:`Conflict` to ``conflicts`` (the caller rolls back)."""
    updates = {k: s for k, s in updates.items() if s.steps.size}
    if not updates:
        return 0
    old = _read_windows(backend, conn, updates)
    replaced = 0
    deletes: list[tuple[int, int, int]] = []
    inserts: list[tuple[int, int, int, int, bytes]] = []
    for (run_id, metric_id), new in updates.items():
        rows = old.get((run_id, metric_id))
        if not rows:
            inserts.extend((run_id, metric_id, f, n, b) for f, n, b in split(new))
            continue
        last_first, last_n, last_blob = rows[-1]
        if last_first + last_n - 1 < int(new.steps[0]):
            # An append (the writer's common case): nothing stored is overwritten, and only the last
            # stored row changes, when the new steps continue it inside its window.
            fresh = split(new)
            f0, n0, b0 = fresh[0]
            if f0 == last_first + last_n and f0 // CHUNK_STEPS == last_first // CHUNK_STEPS:
                deletes.append((run_id, metric_id, last_first))
                fresh[0] = (last_first, last_n + n0, last_blob + b0)
            inserts.extend((run_id, metric_id, f, n, b) for f, n, b in fresh)
            continue
        first, ns, blobs = zip(*rows)
        stored = Series(*expand(first, ns, blobs))
        bad = differing(stored, new)
        if bad.size:
            replaced += int(bad.size)
            if not replace:
                if conflicts is not None:
                    i = int(bad[0])
                    stored_v = stored.values[np.searchsorted(stored.steps, new.steps[i])]
                    conflicts.append(Conflict(run_id, metric_id, int(new.steps[i]), float(stored_v),
                                              float(new.values[i]), int(bad.size)))
                continue
        deletes.extend((run_id, metric_id, f) for f in first)
        inserts.extend((run_id, metric_id, f, n, b) for f, n, b in split(merge(stored, new)))
    if conflicts:
        return replaced
    _apply(backend, conn, deletes, inserts)
    return replaced


def _read_windows(backend: str, conn: Any, updates: dict[tuple[int, int], Series]
                  ) -> dict[tuple[int, int], list[tuple[int, int, bytes]]]:
    """The stored rows of the windows each update touches, by series."""
    p = _P[backend]
    ranges = {k: window_range(s.steps) for k, s in updates.items()}
    by_range: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k, r in ranges.items():
        by_range.setdefault(r, []).append(k)
    out: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {}
    lock = " FOR UPDATE" if backend == "postgresql" else ""
    cur = _cursor(backend, conn)
    try:
        for (lo, hi), keys in by_range.items():
            runs = sorted({k[0] for k in keys})
            metrics = sorted({k[1] for k in keys})
            wanted = set(keys)
            for i in range(0, len(runs), 500):
                part = runs[i:i + 500]
                cur.execute(
                    f"SELECT run_id, metric_id, first_step, n, vals FROM metric_chunks "
                    f"WHERE run_id IN ({', '.join([p] * len(part))}) AND metric_id IN ({', '.join([p] * len(metrics))}) "
                    f"AND first_step >= {p} AND first_step < {p} ORDER BY run_id, metric_id, first_step{lock}",
                    (*part, *metrics, lo, hi),
                )
                for run_id, metric_id, first, n, blob in cur.fetchall():
                    if (run_id, metric_id) in wanted:
                        out.setdefault((run_id, metric_id), []).append((first, n, bytes(blob)))
    finally:
        cur.close()
    return out


def _cursor(backend: str, conn: Any) -> Any:
    """A cursor for reading blobs: PostgreSQL's binary protocol sends bytea as bytes, not hex text."""
    return conn.cursor(binary=True) if backend == "postgresql" else conn.cursor()


def _apply(backend: str, conn: Any, deletes: list[tuple[int, int, int]],
           inserts: list[tuple[int, int, int, int, bytes]]) -> None:
    cur = conn.cursor()
    try:
        if backend == "sqlite":
            if deletes:
                cur.executemany("DELETE FROM metric_chunks WHERE run_id = ? AND metric_id = ? AND first_step = ?",
                                deletes)
            cur.executemany("INSERT INTO metric_chunks (run_id, metric_id, first_step, n, vals) VALUES (?, ?, ?, ?, ?)",
                            inserts)
            return
        if deletes:
            cur.execute(
                "DELETE FROM metric_chunks c USING unnest(%s::int4[], %s::int2[], %s::int8[]) AS d(r, m, f) "
                "WHERE c.run_id = d.r AND c.metric_id = d.m AND c.first_step = d.f",
                ([d[0] for d in deletes], [d[1] for d in deletes], [d[2] for d in deletes]),
            )
        with cur.copy("COPY metric_chunks (run_id, metric_id, first_step, n, vals) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "int2", "int8", "int4", "bytea"])
            for row in inserts:
                cp.write_row(row)
    finally:
        cur.close()


def truncate_after(backend: str, conn: Any, run_id: int, step: int) -> None:
    """Drop a run's values after ``step`` (every series), inside the caller's transaction."""
    p = _P[backend]
    cur = conn.cursor()
    try:
        cur.execute(f"SELECT metric_id, first_step, n, vals FROM metric_chunks WHERE run_id = {p} "
                    f"AND first_step <= {p} AND first_step + n - 1 > {p}", (run_id, step, step))
        cut = cur.fetchall()
        cur.execute(f"DELETE FROM metric_chunks WHERE run_id = {p} AND first_step > {p}", (run_id, step))
        for metric_id, first, n, blob in cut:
            keep = step - first + 1
            cur.execute(f"UPDATE metric_chunks SET n = {p}, vals = {p} WHERE run_id = {p} AND metric_id = {p} "
                        f"AND first_step = {p}", (keep, bytes(blob)[:8 * keep], run_id, metric_id, first))
    finally:
        cur.close()


# ---------------------------------------------------------------------------------------------- grouping
def group_arrays(run_ids: np.ndarray, metric_ids: np.ndarray, steps: np.ndarray,
                 values: np.ndarray) -> dict[tuple[int, int], Series]:
    """Parallel arrays -> one sorted series per (run, metric); a step given twice keeps its last
    value (in the given order)."""
    run_ids = np.asarray(run_ids, dtype=np.int64)
    if run_ids.size == 0:
        return {}
    metric_ids = np.asarray(metric_ids, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keys = run_ids * 65536 + metric_ids
    if not bool(np.all(keys[1:] >= keys[:-1])):
        order = np.argsort(keys, kind="stable")
        keys, run_ids, metric_ids, steps, values = keys[order], run_ids[order], metric_ids[order], steps[order], values[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [keys.size]])
    return {(int(run_ids[a]), int(metric_ids[a])): last_wins(steps[a:b], values[a:b]) for a, b in zip(starts, ends)}


def group_rows(rows: Iterable[tuple[int, int, int, Optional[float]]]) -> dict[tuple[int, int], Series]:
    """(run_id, metric_id, step, value) tuples -> :func:`group_arrays`; None reads as NaN."""
    rows = list(rows)
    if not rows:
        return {}
    arr = np.array([(r, m, s) for r, m, s, _ in rows], dtype=np.int64)
    vals = np.array([np.nan if v is None else v for *_, v in rows], dtype=np.float64)
    return group_arrays(arr[:, 0], arr[:, 1], arr[:, 2], vals)


# ---------------------------------------------------------------------------------------------- reads
def read_series(backend: str, conn: Any, run_ids: Sequence[int], metric_ids: Sequence[int], *,
                lo: Optional[int] = None, hi: Optional[int] = None) -> dict[str, np.ndarray]:
    """Every stored value of ``run_ids`` x ``metric_ids`` with ``lo <= step <= hi``, through a raw
    DB-API connection: arrays run_id, metric_id, step (int64) and value (float64), sorted by run_id,
    metric_id, step. Whole chunks are read (a key range each) and decoded with one frombuffer."""
    p = _P[backend]
    runs = sorted({int(r) for r in run_ids})
    metrics = sorted({int(m) for m in metric_ids})
    parts: list[tuple[Any, ...]] = []
    if runs and metrics:
        where = ""
        extra: list[int] = []
        if lo is not None:  # a chunk ends at or after lo: first_step > lo - CHUNK_STEPS keeps the key range
            where += f" AND first_step > {p} AND first_step + n > {p}"
            extra += [int(lo) - CHUNK_STEPS, int(lo)]
        if hi is not None:
            where += f" AND first_step <= {p}"
            extra.append(int(hi))
        cur = _cursor(backend, conn)
        try:
            for i in range(0, len(runs), 900):
                part = runs[i:i + 900]
                cur.execute(
                    "SELECT run_id, metric_id, first_step, n, vals FROM metric_chunks "
                    f"WHERE run_id IN ({', '.join([p] * len(part))}) AND metric_id IN ({', '.join([p] * len(metrics))})"
                    f"{where} ORDER BY run_id, metric_id, first_step", (*part, *metrics, *extra))
                parts.extend(cur.fetchall())
        finally:
            cur.close()
    if not parts:
        return {"run_id": _EMPTY_I, "metric_id": _EMPTY_I, "step": _EMPTY_I, "value": _EMPTY_F}
    r, m, first, ns, blobs = zip(*parts)
    steps, values = expand(first, ns, blobs)
    ns_a = np.asarray(ns, dtype=np.int64)
    metric = (np.broadcast_to(np.int64(metrics[0]), values.shape) if len(metrics) == 1  # a view: no copy
              else np.repeat(np.asarray(m, dtype=np.int64), ns_a))
    out = {"run_id": np.repeat(np.asarray(r, dtype=np.int64), ns_a), "metric_id": metric, "step": steps, "value": values}
    if lo is not None or hi is not None:
        keep = np.ones(steps.size, dtype=bool)
        if lo is not None:
            keep &= steps >= lo
        if hi is not None:
            keep &= steps <= hi
        if not bool(keep.all()):
            out = {k: v[keep] for k, v in out.items()}
    return out


def last_steps(backend: str, conn: Any, run_ids: Sequence[int]) -> dict[int, int]:
    """The last stored step of each run (any series); runs without values are absent."""
    p = _P[backend]
    out: dict[int, int] = {}
    runs = [int(r) for r in run_ids]
    cur = conn.cursor()
    try:
        for i in range(0, len(runs), 900):
            part = runs[i:i + 900]
            cur.execute(f"SELECT run_id, MAX(first_step + n - 1) FROM metric_chunks WHERE run_id IN "
                        f"({', '.join([p] * len(part))}) GROUP BY run_id", part)
            out.update({int(r): int(s) for r, s in cur.fetchall()})
    finally:
        cur.close()
    return out


def by_length(run_ids: Sequence[int], last: Mapping[int, int], *, max_runs: int, max_values: int,
              keep_long: bool = True) -> Iterator[list[int]]:
    """``run_ids`` in order, in slices of at most ``max_runs`` runs and about ``max_values`` stored
    steps (``last``: each run's last step, :func:`last_steps`, which bounds a series' length), so a
    caller holds one slice's values at a time. A run longer than ``max_values`` on its own is a slice
    of its own with ``keep_long``, else left out."""
    part: list[int] = []
    size = 0
    for run_id in run_ids:
        n = last.get(run_id, -1) + 1
        if n > max_values and not keep_long:
            continue
        if part and (len(part) == max_runs or size + n > max_values):
            yield part
            part, size = [], 0
        part.append(run_id)
        size += n
    if part:
        yield part
