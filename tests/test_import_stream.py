"""gammadb.import_stream: an import file in bounded batches, and the repeats found across them."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb import import_stream
from gammadb.errors import InvalidSpecError
from gammadb.import_stream import Repeat, SeenSteps, open_batches


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(import_stream, "CSV_BLOCK_BYTES", 64)
    monkeypatch.setattr(import_stream, "INFER_ROWS", 3)
    monkeypatch.setattr(import_stream, "BATCH_CELLS", 20)


def frame(n: int = 40) -> pl.DataFrame:
    return pl.DataFrame({"step": list(range(n)), "loss": [1 / (i + 1) for i in range(n)],
                         "model": [f'm "{i}"\nsecond line' if i % 7 == 3 else f"m{i}" for i in range(n)]})


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_batches_hold_every_row_once_in_order(tmp_path: Path, small_blocks: None, fmt: str) -> None:
    """Quoted fields holding quotes and newlines, cut anywhere by the small blocks, come back whole."""
    df = frame()
    path = tmp_path / f"f.{fmt}"
    if fmt == "parquet":
        df.write_parquet(path)
    elif fmt == "csv":
        df.write_csv(path)
    else:
        path.write_bytes(gzip.compress(df.write_csv().encode()))
    src = open_batches(path)
    frames = list(src.frames)
    assert len(frames) > 4 and all(f.height <= 12 for f in frames)
    assert_frame_equal(pl.concat(frames), df)
    assert src.schema == df.schema


def test_csv_types_come_from_the_first_rows(tmp_path: Path, small_blocks: None) -> None:
    """A value that does not fit the type of the first rows is a read error (as pl.read_csv gives)."""
    path = tmp_path / "f.csv"
    path.write_text("step,loss\n" + "".join(f"{i},0.5\n" for i in range(30)) + "2.5,0.5\n")
    src = open_batches(path)
    with pytest.raises(InvalidSpecError, match=r"^cannot read .*f\.csv: could not parse `2.5` as dtype `i64`"):
        list(src.frames)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidSpecError, match=r"^cannot read .*x\.parquet: "):
        src = open_batches(tmp_path / "x.parquet")
        list(src.frames)
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(InvalidSpecError, match=r"unsupported format '\.txt'"):
        open_batches(tmp_path / "x.txt")


def test_last_line_end_skips_newlines_inside_quotes() -> None:
    data = b'a,"x\ny",1\nb,"p""\nq",2\nc,"open\n'
    cut = import_stream._last_line_end(data)
    assert data[:cut + 1] == b'a,"x\ny",1\nb,"p""\nq",2\n'
    assert pl.read_csv(io.BytesIO(data[:cut + 1]), has_header=False)["column_1"].to_list() == ["x\ny", 'p"\nq']


# ---------------------------------------------------------------------------------------------- SeenSteps
def add_in_batches(seen: SeenSteps, runs: np.ndarray, steps: np.ndarray, size: int) -> Repeat | None:
    rows = np.arange(1, runs.size + 1)
    found = None
    for a in range(0, runs.size, size):
        got = seen.add(runs[a:a + size], steps[a:a + size], rows[a:a + size])
        if got is not None and (found is None or got < found):
            found = got
    return found


@pytest.mark.parametrize("order", ["by-run", "by-step", "every-10", "log-spaced", "shuffled"])
def test_seen_steps_finds_exactly_the_repeats(order: str) -> None:
    """Whatever the file's order and cadence, a repeat is found with its first row, and a file
    without one passes; the record stays a few progressions where the file is regular."""
    rng = np.random.default_rng(0)
    n_runs = 7
    steps_of = {"every-10": np.arange(0, 2000, 10), "log-spaced": np.unique(np.geomspace(1, 10**6, 300).astype(int))}
    steps1 = steps_of.get(order, np.arange(1, 301))
    runs = np.repeat(np.arange(n_runs), steps1.size)
    steps = np.tile(steps1, n_runs)
    if order == "by-step":
        i = np.lexsort((runs, steps))
        runs, steps = runs[i], steps[i]
    if order == "shuffled":
        i = rng.permutation(runs.size)
        runs, steps = runs[i], steps[i]
    seen = SeenSteps()
    assert add_in_batches(seen, runs, steps, 97) is None
    if order in ("by-run", "by-step", "every-10"):
        assert all(len(r.progs) == 1 for r in seen._runs.values())

    # The same file with row 50's (run, step) given again at rows 200 and 1000, and row 70's at 300.
    dup_runs, dup_steps = runs.copy(), steps.copy()
    for src, dst in ((49, 199), (49, 999), (69, 299)):
        dup_runs[dst], dup_steps[dst] = runs[src], steps[src]
    first_seen = {}
    for i, key in enumerate(zip(dup_runs.tolist(), dup_steps.tolist())):
        first_seen.setdefault(key, i + 1)
    want = min((first_seen[k], i + 1) for i, k in enumerate(zip(dup_runs.tolist(), dup_steps.tolist()))
               if first_seen[k] != i + 1)
    for size in (97, 10_000):  # many batches, one batch
        got = add_in_batches(SeenSteps(), dup_runs, dup_steps, size)
        assert got is not None and (got.first_row, got.row) == want
        assert (got.run, got.step) == (int(dup_runs[want[0] - 1]), int(dup_steps[want[0] - 1]))


def test_seen_steps_falls_back_to_arrays_and_stays_exact() -> None:
    seen = SeenSteps()
    steps = np.array([1, 2, 4, 8, 16, 32, 64, 128] * 20) + np.repeat(np.arange(20) * 1000, 8)
    runs = np.zeros(steps.size, dtype=np.int64)
    assert add_in_batches(seen, runs, steps[::-1].copy(), 7) is None
    rec = seen._runs[0]
    assert rec.steps is not None and rec.progs == [] and rec.steps.size == steps.size
    got = seen.add(np.array([0]), np.array([steps[5]]), np.array([10_000]))
    assert got == Repeat(int(steps.size - 5), 10_000, 0, int(steps[5]))
