"""An import file as a stream of bounded batches: the readers (CSV in blocks of text, Parquet in
batches of rows) and :class:`SeenSteps`, which finds a run's step given twice anywhere in the file
without holding the file.

Memory is bounded by a batch (about :data:`CSV_BLOCK_BYTES` of text or :data:`BATCH_CELLS`
cells), not by the file: a CSV is read with plain ``read`` calls, so a pipe or FIFO streams too.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

import numpy as np
import polars as pl

from gammadb.errors import InvalidSpecError, NotFoundError

CSV_BLOCK_BYTES = 8 << 20  # a batch of CSV: about this much text
BATCH_CELLS = 2 << 20  # a batch of Parquet (or in-memory) rows: about this many cells
INFER_ROWS = 10_000  # CSV column types come from the first rows, as pl.read_csv(infer_schema_length=) did


@dataclasses.dataclass
class FileBatches:
    """A file's schema and its rows, batch after batch (frames of that schema, in file order)."""

    schema: pl.Schema
    frames: Iterator[pl.DataFrame]


def open_batches(path: Path) -> FileBatches:
    """``path`` (.parquet, or .csv / .gz, gzip-compressed or not) as batches. Whatever cannot be read,
    here or while iterating, raises InvalidSpecError("cannot read PATH: ...")."""
    if not path.exists():
        raise NotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".gz"):
        raise InvalidSpecError(f"{path}: unsupported format {suffix!r} (use .parquet or .csv)")
    try:
        if suffix == ".parquet":
            lf = pl.scan_parquet(path)
            schema = lf.collect_schema()
            rows = max(1, BATCH_CELLS // max(1, len(schema)))
            return FileBatches(schema, _guarded(path, lf.collect_batches(chunk_size=rows)))
        first, frames = _csv_frames(path)
        return FileBatches(first.schema, _guarded(path, frames, first))
    except InvalidSpecError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> InvalidSpecError:
    return InvalidSpecError(f"cannot read {path}: {(str(exc) or type(exc).__name__).splitlines()[0]}")


def _guarded(path: Path, frames: Iterator[pl.DataFrame], first: Optional[pl.DataFrame] = None
             ) -> Iterator[pl.DataFrame]:
    if first is not None:
        yield first
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:
            raise _unreadable(path, exc) from None
        yield frame


# ---------------------------------------------------------------------------------------------- CSV
def _csv_frames(path: Path) -> tuple[pl.DataFrame, Iterator[pl.DataFrame]]:
    """The first block parsed (header, and types inferred from its first INFER_ROWS rows), and the
    rest of the file parsed block by block with those types."""
    f = open(path, "rb")  # noqa: SIM115 (closed by the generator, or below)
    try:
        stream: IO[bytes] = gzip.GzipFile(fileobj=f) if f.peek(2)[:2] == b"\x1f\x8b" else f
        blocks = _blocks(stream)
        head = next(blocks, b"")
        first = pl.read_csv(io.BytesIO(head), infer_schema_length=INFER_ROWS)
    except BaseException:
        f.close()
        raise

    def rest() -> Iterator[pl.DataFrame]:
        try:
            for block in blocks:
                yield pl.read_csv(io.BytesIO(block), has_header=False, schema=first.schema)
        finally:
            f.close()

    return first, rest()


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream in pieces of about CSV_BLOCK_BYTES, each ending at a line end outside quotes (the
    first one holds the header and at least INFER_ROWS rows, if the file has them)."""
    carry = b""
    first = True
    while True:
        parts, size, lines, eof = [carry], len(carry), carry.count(b"\n"), False
        while size < CSV_BLOCK_BYTES or (first and lines <= INFER_ROWS):
            piece = stream.read1(CSV_BLOCK_BYTES)  # type: ignore[attr-defined]  # what is there (a FIFO: a pipe's worth)
            if not piece:
                eof = True
                break
            parts.append(piece)
            size += len(piece)
            lines += piece.count(b"\n") if first else 0
        data = b"".join(parts)
        if eof:
            if data.strip() or first:
                yield data
            return
        cut = _last_line_end(data)
        if cut < 0:  # one row longer than a block: read on
            carry = data
            continue
        first = False
        yield data[:cut + 1]
        carry = data[cut + 1:]


def _last_line_end(data: bytes) -> int:
    """The index of the last newline of ``data`` outside a quoted field (-1 if none)."""
    cut = data.rfind(b"\n")
    if b'"' not in data:
        return cut
    while cut >= 0 and data.count(b'"', 0, cut) % 2:  # inside quotes: an escaped "" counts twice
        cut = data.rfind(b"\n", 0, cut)
    return cut


# ---------------------------------------------------------------------------------------------- repeats
@dataclasses.dataclass(frozen=True, order=True)
class Repeat:
    """A step of a run given twice: its first file row, the row that repeats it."""

    first_row: int
    row: int
    run: int
    step: int


# A run's record switches from progressions to plain arrays past this many progressions.
MAX_PROGRESSIONS = 64


class SeenSteps:
    """The (step, file row) of every row read so far, per run (an int index).

    A run's record is a few arithmetic progressions of (step, row) where both advance evenly, as in
    a file sorted by run (rows +1) or by step (rows +runs), logged every step or every k steps, so
    the record's size follows the file's shape, not its length. Irregular steps (log-spaced, or
    out of order) fall back to the pairs themselves (16 bytes a row of that run)."""

    def __init__(self) -> None:
        self._last = np.full(0, -1, dtype=np.int64)  # each run's highest step so far (-1: none)
        self._runs: dict[int, _RunSteps] = {}

    def add(self, runs: np.ndarray, steps: np.ndarray, rows: np.ndarray) -> Optional[Repeat]:
        """Record a batch (rows ascending, all after the rows recorded so far). Returns its first
        repeat by (first row, repeating row), against earlier batches or within it, or None."""
        runs, steps, rows = (np.asarray(a, dtype=np.int64) for a in (runs, steps, rows))
        if runs.size == 0:
            return None
        top = int(runs.max()) + 1
        if top > self._last.size:
            self._last = np.concatenate([self._last, np.full(top - self._last.size, -1, dtype=np.int64)])
        d_run = np.diff(runs)
        if not bool(np.all((d_run > 0) | ((d_run == 0) & (np.diff(steps) > 0)))):  # else sorted already
            order = np.lexsort((rows, steps, runs))
            runs, steps, rows = runs[order], steps[order], rows[order]
        found: list[Repeat] = []
        same = (runs[1:] == runs[:-1]) & (steps[1:] == steps[:-1])
        if same.any():  # within the batch: the first two rows of each repeated step
            i = np.flatnonzero(same & ~np.concatenate([[False], same[:-1]]))
            j = i[np.lexsort((rows[i + 1], rows[i]))[0]]
            found.append(Repeat(int(rows[j]), int(rows[j + 1]), int(runs[j]), int(steps[j])))
            keep = np.concatenate([[True], ~same])
            runs, steps, rows = runs[keep], steps[keep], rows[keep]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(runs)) + 1])
        ends = np.append(starts[1:], runs.size)
        seg_runs = runs[starts]
        # Against earlier batches, only where a run's lowest step here is not above its last one.
        for k in np.flatnonzero(steps[starts] <= self._last[seg_runs]):
            a, b = int(starts[k]), int(ends[k])
            earlier = self._runs[int(seg_runs[k])].rows_at(steps[a:b])
            hit = np.flatnonzero(earlier >= 0)
            if hit.size:
                h = hit[np.lexsort((rows[a:b][hit], earlier[hit]))[0]]
                found.append(Repeat(int(earlier[h]), int(rows[a + h]), int(seg_runs[k]), int(steps[a + h])))
        for a, b, run in zip(starts.tolist(), ends.tolist(), seg_runs.tolist()):
            rec = self._runs.get(run)
            if rec is None:
                rec = self._runs[run] = _RunSteps()
            rec.add(steps[a:b], rows[a:b])
        np.maximum.at(self._last, seg_runs, steps[ends - 1])
        return min(found) if found else None


class _RunSteps:
    """One run's (step, row) pairs: progressions ``[step0, n, dstep, row0, drow]``, or arrays."""

    __slots__ = ("progs", "steps", "rows")

    def __init__(self) -> None:
        self.progs: list[list[int]] = []
        self.steps: Optional[np.ndarray] = None  # set once the run falls back to arrays (sorted)
        self.rows: Optional[np.ndarray] = None

    def add(self, steps: np.ndarray, rows: np.ndarray) -> None:
        """Steps sorted and unique, none recorded before."""
        if self.steps is not None:
            self._add_arrays(steps, rows)
            return
        for p in _progressions(steps, rows):
            last = self.progs[-1] if self.progs else None
            if last is not None and _extends(last, p):
                if last[1] == 1:
                    last[2], last[4] = p[0] - last[0], p[3] - last[3]
                last[1] += p[1]
            else:
                self.progs.append(p)
        if len(self.progs) > MAX_PROGRESSIONS:
            all_steps, all_rows = self._arrays()
            self.progs = []
            self.steps, self.rows = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
            self._add_arrays(all_steps, all_rows)

    def rows_at(self, steps: np.ndarray) -> np.ndarray:
        """The recorded row of each step, -1 where none."""
        out = np.full(steps.size, -1, dtype=np.int64)
        if self.steps is not None:
            i = np.searchsorted(self.steps, steps)
            ok = i < self.steps.size
            ok[ok] = self.steps[i[ok]] == steps[ok]
            out[ok] = self.rows[i[ok]]  # type: ignore[index]
            return out
        for s0, n, ds, r0, dr in self.progs:
            k, rem = np.divmod(steps - s0, ds)
            m = (rem == 0) & (k >= 0) & (k < n)
            out[m] = r0 + k[m] * dr
        return out

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        steps = np.concatenate([s0 + ds * np.arange(n, dtype=np.int64) for s0, n, ds, _, _ in self.progs])
        rows = np.concatenate([r0 + dr * np.arange(n, dtype=np.int64) for _, n, _, r0, dr in self.progs])
        return steps, rows

    def _add_arrays(self, steps: np.ndarray, rows: np.ndarray) -> None:
        assert self.steps is not None and self.rows is not None
        s, r = np.concatenate([self.steps, steps]), np.concatenate([self.rows, rows])
        order = np.argsort(s, kind="stable")
        self.steps, self.rows = s[order], r[order]


def _progressions(steps: np.ndarray, rows: np.ndarray) -> list[list[int]]:
    """Consecutive pairs split where the step or row increment changes (a partition, not always the
    fewest pieces)."""
    if steps.size == 1:
        return [[int(steps[0]), 1, 1, int(rows[0]), 1]]
    ds, dr = np.diff(steps), np.diff(rows)
    change = np.flatnonzero((ds[1:] != ds[:-1]) | (dr[1:] != dr[:-1])) + 1  # diff i differs from diff i-1
    starts = np.concatenate([[0], change + 1])
    ends = np.append(starts[1:], steps.size)
    out = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        if b - a == 1:
            out.append([int(steps[a]), 1, 1, int(rows[a]), 1])
        else:
            out.append([int(steps[a]), b - a, int(ds[a]), int(rows[a]), int(dr[a])])
    return out


def _extends(last: list[int], p: list[int]) -> bool:
    """Whether progression ``p`` continues ``last`` with the same increments."""
    ds = p[0] - (last[0] + (last[1] - 1) * last[2])
    dr = p[3] - (last[3] + (last[1] - 1) * last[4])
    if ds <= 0:
        return False
    if last[1] > 1 and (ds, dr) != (last[2], last[4]):
        return False
    return p[1] == 1 or (ds, dr) == (p[2], p[4])
