"""`gammadb import` / `gammadb export`: all-or-nothing, validated import keyed by run identity; exact
round trip; clear errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.store import Store
from gammadb.transfer import export_frame, import_file, import_frame
from gammadb.urls import sqlite_path
from tests.conftest import BACKENDS, _pg_database


def synthetic(n_steps: int = 50) -> pl.DataFrame:
    rows = []
    for gamma in (0.1, 1.0, 10.0):
        for eta in (0.01, 0.1):
            for seed in (0, 1):
                for step in range(1, n_steps + 1):
                    loss = 1.0 / (1 + eta * step / gamma)
                    if gamma == 10.0 and eta == 0.1 and step >= 30:
                        loss = math.nan if step == 30 else math.inf
                    rows.append(dict(gamma=gamma, eta=eta, seed=seed, step=step, loss=loss, depth=3,
                                     model="mlp", **{"weight_change.l1": 0.01 * step, "ntk_alignment": 0.5}))
    return pl.DataFrame(rows)


def test_import_twice_equals_once_and_export_round_trips(store: Store, tmp_path: Path) -> None:
    df = synthetic()
    path = tmp_path / "runs.parquet"
    df.write_parquet(path)
    first = import_file(store, path, "imp")
    count = store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0]
    second = import_file(store, path, "imp")
    assert (first.runs, first.new_runs, second.new_runs) == (12, 12, 0)
    assert store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0] == count == 12 * 50 * 3
    assert first.diverged == 2

    out = export_frame(store, "imp")
    cols = df.columns
    got = out.select(cols).sort("gamma", "eta", "seed", "step")
    want = df.select(cols).sort("gamma", "eta", "seed", "step")
    assert_frame_equal(got, want, check_dtypes=False)


def test_diverged_at_first_nonfinite_step(store: Store) -> None:
    import_frame(store, synthetic(), "imp")
    runs = store.runs_frame("imp").filter(pl.col("status") == "diverged")
    assert runs.height == 2 and runs["diverged_at"].to_list() == [30, 30]
    assert all(g == 10.0 for g in runs["gamma"].to_list())


def test_csv_import_and_export(store: Store, tmp_path: Path) -> None:
    from gammadb.transfer import export_sweep

    path = tmp_path / "runs.csv"
    synthetic(10).write_csv(path)
    rep = import_file(store, path, "csv")
    assert rep.runs == 12
    out = tmp_path / "out.csv"
    assert export_sweep(store, "csv", out) == 120
    back = pl.read_csv(out)
    assert back.height == 120 and math.isnan(back.filter(pl.col("step") == 10)["loss"].max()) is False


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop("eta"), "missing: eta"),
    (lambda df: df.with_columns(pl.lit(-1.0).alias("gamma")), "row 1, column 'gamma': must be a finite number > 0"),
    (lambda df: pl.concat([df, df.head(1)]), "rows 1 and 61 repeat step 1 of the run gamma=0.1, eta=0.01, seed=0"),
    (lambda df: df.head(0), "no rows"),
], ids=["missing-column", "negative-gamma", "duplicate-step", "empty"])
def test_bad_files_are_refused_before_writing(store: Store, mutate, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        import_frame(store, mutate(synthetic(5)), "bad")
    assert store.read("SELECT COUNT(*) AS n FROM runs")["n"][0] == 0


def test_missing_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        import_file(store, tmp_path / "nope.parquet", "x")


# ---------------------------------------------------------------------- all or nothing, validated, keyed by run
runner = CliRunner()
ROOT = Path(__file__).parents[2]


def snapshot(store: Store, values: bool = True) -> dict[str, list]:
    """Everything an import writes (timestamps aside); ``values`` False: metric_values as sums only."""
    queries = {
        "sweeps": "SELECT id, name FROM sweeps ORDER BY id",
        "runs": "SELECT id, sweep_id, point_key, status, steps_planned, steps_done, diverged_at FROM runs ORDER BY id",
        "metrics": "SELECT id, name, layer FROM metrics ORDER BY id",
        "run_summaries": "SELECT run_id, initial_loss, final_loss, final_step, min_loss, min_loss_step, "
                         "tail_mean_loss, diverged, steps_logged FROM run_summaries ORDER BY run_id",
        "metric_values": "SELECT COUNT(*) AS n, SUM(step) AS steps, SUM(run_id) AS runs FROM metric_values",
    }
    out = {k: [tuple(str(v) for v in row) for row in store.read(q).rows()] for k, q in queries.items()}
    if values:  # str(): NaN equals NaN, and SQLite's NULL-for-NaN reads back the same way each time
        q = "SELECT run_id, metric_id, step, value FROM metric_values ORDER BY run_id, metric_id, step"
        out["values"] = [tuple(str(v) for v in row) for row in store.read(q).rows()]
    return out


def set_cell(df: pl.DataFrame, column: str, row: int, value: object) -> pl.DataFrame:
    """``df`` with ``column`` at 1-based ``row`` set to ``value``."""
    return df.with_columns(pl.when(pl.int_range(pl.len()) == row - 1).then(pl.lit(value))
                           .otherwise(pl.col(column)).alias(column))


BAD = [  # (id, how to spoil synthetic(5), the message after "bad.csv ")
    ("gamma-nan", lambda df: set_cell(df, "gamma", 7, math.nan),
     "row 7, column 'gamma': must be a finite number > 0, got nan"),
    ("gamma-inf", lambda df: set_cell(df, "gamma", 7, math.inf),
     "row 7, column 'gamma': must be a finite number > 0, got inf"),
    ("gamma-zero", lambda df: set_cell(df, "gamma", 9, 0.0),
     "row 9, column 'gamma': must be a finite number > 0, got 0.0"),
    ("eta-negative", lambda df: set_cell(df, "eta", 3, -0.1),
     "row 3, column 'eta': must be a finite number > 0, got -0.1"),
    ("eta-empty", lambda df: set_cell(df, "eta", 4, None), "row 4, column 'eta': must not be empty"),
    ("seed-fraction", lambda df: set_cell(df, "seed", 7, 0.5), "row 7, column 'seed': must be a whole number, got 0.5"),
    ("seed-too-big", lambda df: set_cell(df, "seed", 7, 2**40),
     "row 7, column 'seed': must be between -2147483648 and 2147483647, got 1099511627776"),
    ("step-negative", lambda df: set_cell(df, "step", 2, -1),
     "row 2, column 'step': must be between 0 and 2147483647, got -1"),
    ("step-2^31", lambda df: set_cell(df, "step", 5, 2**31),
     "row 5, column 'step': must be between 0 and 2147483647, got 2147483648"),
    ("step-2^40", lambda df: set_cell(df, "step", 5, 2**40),
     "row 5, column 'step': must be between 0 and 2147483647, got 1099511627776"),
    ("step-fraction", lambda df: set_cell(df, "step", 5, 2.5), "row 5, column 'step': must be a whole number, got 2.5"),
    ("depth-fraction", lambda df: set_cell(df, "depth", 8, 2.5),
     "row 8, column 'depth': must be a whole number, got 2.5"),
    ("model-too-long", lambda df: set_cell(df, "model", 6, "m" * 33),
     f"row 6, column 'model': must have at most 32 characters, got '{'m' * 33}'"),
    ("layer-40000", lambda df: df.rename({"weight_change.l1": "weight_change.l40000"}),
     "column 'weight_change.l40000': layer 40000 is beyond 32767"),
    ("same-metric-twice", lambda df: df.with_columns(pl.col("ntk_alignment").alias("ntk_alignment.l0")),
     "columns 'ntk_alignment' and 'ntk_alignment.l0' are the same metric"),
]


@pytest.fixture(scope="module", params=BACKENDS)
def good_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store per backend holding sweep 'good', shared by the refusal tests (each leaves it as it was)."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('good') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    url = next(urls)
    with Store.open(url) as store:
        import_frame(store, synthetic(5), "good")
    yield url
    next(urls, None)  # drops the PostgreSQL database


@pytest.mark.parametrize("spoil, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_value_is_refused_with_its_column_and_row(good_url: str, tmp_path: Path, spoil, message: str) -> None:
    with Store.open(good_url) as store:
        before = snapshot(store)
    assert len(before["runs"]) == 12
    path = tmp_path / "bad.csv"
    spoil(synthetic(5)).write_csv(path)
    for sweep in ("bad", "good"):  # a new sweep is not left behind empty; an existing one is untouched
        r = runner.invoke(app, ["import", str(path), "--sweep", sweep, "--url", good_url])
        assert r.exit_code == 2, r.output
        assert r.stderr == f"error: bad.csv {message}\n"
    with Store.open(good_url) as store:
        assert snapshot(store) == before


def test_a_second_file_of_later_steps_extends_the_runs(store: Store, tmp_path: Path) -> None:
    df = synthetic(50)
    first, second = tmp_path / "steps_1_25.csv", tmp_path / "steps_26_50.parquet"
    df.filter(pl.col("step") <= 25).write_csv(first)
    df.filter(pl.col("step") > 25).write_parquet(second)
    a = import_file(store, first, "ext")
    assert (a.new_runs, a.diverged) == (12, 0)
    assert set(store.runs_frame("ext")["steps_done"]) == {25}
    b = import_file(store, second, "ext")
    assert (b.runs, b.new_runs, b.diverged) == (12, 0, 2)
    import_frame(store, df, "ref")  # the same steps in one file

    cols = ["gamma", "eta", "seed", "status", "steps_planned", "steps_done", "diverged_at", "initial_loss",
            "final_loss", "min_loss", "min_loss_step", "tail_mean_loss"]
    got, want = (store.runs_frame(s).select(cols).sort("gamma", "eta", "seed") for s in ("ext", "ref"))
    assert_frame_equal(got, want)
    assert got["steps_done"].unique().to_list() == [50]
    assert got.filter(pl.col("status") == "diverged")["diverged_at"].to_list() == [30, 30]
    summaries = store.read("SELECT final_step, steps_logged FROM run_summaries")
    assert summaries.unique().rows() == [(50, 50)] and summaries.height == 24
    assert store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0] == 2 * 12 * 50 * 3


def test_the_same_data_in_three_files_is_one_set_of_runs(store: Store, tmp_path: Path) -> None:
    df = synthetic(50)  # NaN and inf losses included: they equal themselves
    paths = [tmp_path / "good.csv", tmp_path / "good_copy.csv", tmp_path / "good.parquet"]
    df.write_csv(paths[0])
    df.write_csv(paths[1])
    df.write_parquet(paths[2])
    reports = [import_file(store, paths[0], "three")]
    once = snapshot(store)
    reports += [import_file(store, p, "three") for p in paths[1:]]
    assert [(r.runs, r.new_runs) for r in reports] == [(12, 12), (12, 0), (12, 0)]
    assert [r.replaced for r in reports] == [0, 0, 0]
    assert snapshot(store) == once
    assert store.read("SELECT COUNT(*) AS n FROM runs")["n"][0] == 12


def test_a_conflicting_value_is_refused_unless_replace(store_url: str, tmp_path: Path) -> None:
    good, changed = tmp_path / "good.csv", tmp_path / "changed.csv"
    synthetic(50).write_csv(good)
    longer = synthetic(60)  # steps 1-50 as in good.csv, then 10 more: new steps alone would be welcome
    at = (pl.col("gamma") == 1.0) & (pl.col("eta") == 0.1) & (pl.col("seed") == 1) & (pl.col("step") == 50)
    row = int(longer.with_row_index("i", 1).filter(at)["i"][0])
    set_cell(longer, "loss", row, 0.125).write_csv(changed)
    assert runner.invoke(app, ["import", str(good), "--sweep", "s", "--url", store_url]).exit_code == 0
    with Store.open(store_url) as store:
        before = snapshot(store)

    r = runner.invoke(app, ["import", str(changed), "--sweep", "s", "--url", store_url])
    assert r.exit_code == 2, r.output
    assert r.stderr == (f"error: changed.csv row {row}, column 'loss': step 50 of this run is {1 / 6!r} in the "
                        f"store and 0.125 here (1 of the file's values differs from the store); nothing was "
                        f"imported: pass --replace to let the file win\n")
    with Store.open(store_url) as store:
        assert snapshot(store) == before

    r = runner.invoke(app, ["import", str(changed), "--sweep", "s", "--url", store_url, "--replace"])
    assert r.exit_code == 0, r.output
    assert "12 runs (0 new, 2 diverged), 2160 values of loss, weight_change.l1, ntk_alignment, 1 replaced" in r.stdout
    with Store.open(store_url) as store:
        run = store.runs_frame("s").filter((pl.col("gamma") == 1.0) & (pl.col("eta") == 0.1) & (pl.col("seed") == 1))
        assert run.select("steps_done", "min_loss", "min_loss_step", "final_loss").row(0) == (60, 0.125, 50, 1 / 7)
        loss = store.series(run["run_id"].to_list()).filter(pl.col("step") == 50)["value"].to_list()
        assert loss == [0.125]
        assert set(store.runs_frame("s")["steps_done"]) == {60}


# ---------------------------------------------------------------------- streamed: many batches, one import
def read_in_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files and frames read a few rows at a time (a CSV's types still come from its first 20 rows)."""
    from gammadb import import_stream

    monkeypatch.setattr(import_stream, "CSV_BLOCK_BYTES", 512)
    monkeypatch.setattr(import_stream, "INFER_ROWS", 20)
    monkeypatch.setattr(import_stream, "BATCH_CELLS", 100)


def open_batches_of(path: Path) -> list[pl.DataFrame]:
    from gammadb.import_stream import open_batches

    return list(open_batches(path).frames)


def by_step(df: pl.DataFrame) -> pl.DataFrame:
    """The rows interleaved across runs, as a log written during training."""
    return df.sort("step", "gamma", "eta", "seed", maintain_order=True)


@pytest.mark.parametrize("order", [lambda df: df, by_step], ids=["by-run", "by-step"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_file_read_in_many_batches_imports_as_one(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fmt: str, order) -> None:
    """Runs met in later batches, series continued across batches: the same runs, summaries and
    values as the frame imported in one batch."""
    df = order(synthetic(50))
    import_frame(store, df, "ref")
    read_in_small_batches(monkeypatch)
    path = tmp_path / f"runs.{fmt}"
    df.write_csv(path) if fmt == "csv" else df.write_parquet(path)
    assert len(open_batches_of(path)) > 20
    rep = import_file(store, path, "file")
    assert (rep.rows, rep.runs, rep.new_runs, rep.values, rep.diverged) == (600, 12, 12, 1800, 2)
    import_frame(store, df, "frame")
    cols = ["gamma", "eta", "seed", "status", "steps_planned", "steps_done", "diverged_at", "initial_loss",
            "final_loss", "min_loss", "min_loss_step", "tail_mean_loss"]
    want = store.runs_frame("ref").select(cols).sort("gamma", "eta", "seed")
    q = ("SELECT r.gamma, r.eta, r.seed, v.metric, v.step, v.value FROM metric_series v JOIN runs r ON r.id = v.run_id "
         "WHERE v.sweep = ? ORDER BY r.gamma, r.eta, r.seed, v.metric, v.step")
    reference = [tuple(str(x) for x in row) for row in store.read(q, ["ref"]).rows()]
    assert len(reference) == 1800
    for sweep in ("file", "frame"):
        assert_frame_equal(store.runs_frame(sweep).select(cols).sort("gamma", "eta", "seed"), want)
        assert [tuple(str(x) for x in row) for row in store.read(q, [sweep]).rows()] == reference


def _spoil_many(df: pl.DataFrame) -> pl.DataFrame:
    for row in (7, 30, 55):
        df = set_cell(df, "gamma", row, -1.0)
    return df


MANY_BATCHES_BAD = [  # (id, spoil synthetic(5): 60 rows, read ~8 rows a batch; the message after "bad.csv ")
    ("rule-order-before-row-order", lambda df: set_cell(set_cell(df, "eta", 5, None), "gamma", 50, -1.0),
     "row 50, column 'gamma': must be a finite number > 0, got -1.0"),
    ("rows-like-it-in-later-batches", _spoil_many,
     "row 7, column 'gamma': must be a finite number > 0, got -1.0; 2 more rows like it"),
    ("first-repeat-by-first-row", lambda df: pl.concat([df[:10], df[9:10], df[10:], df[2:3]]),
     "rows 3 and 62 repeat step 3 of the run gamma=0.1, eta=0.01, seed=0: each run's step must appear once"),
    ("bad-row-after-a-repeat", lambda df: set_cell(pl.concat([df[:1], df]), "eta", 59, -0.5),
     "row 59, column 'eta': must be a finite number > 0, got -0.5"),
]


@pytest.mark.parametrize("spoil, message", [b[1:] for b in MANY_BATCHES_BAD], ids=[b[0] for b in MANY_BATCHES_BAD])
def test_errors_are_those_of_the_whole_file_however_it_is_batched(store: Store, tmp_path: Path, spoil, message: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The error names the rule, row and count a check of the whole file gives, and nothing is
    written, whether the file is read in one batch or in many."""
    import_frame(store, synthetic(5).filter(pl.col("gamma") == 10.0), "bad")
    before = snapshot(store)
    path = tmp_path / "bad.csv"
    spoil(synthetic(5)).write_csv(path)
    for many in (False, True):
        if many:
            read_in_small_batches(monkeypatch)
        assert (len(open_batches_of(path)) > 4) == many
        with pytest.raises(InvalidSpecError) as err:
            import_file(store, path, "bad")
        assert str(err.value) == f"bad.csv {message}"
        assert snapshot(store) == before


def test_conflicts_in_several_batches_are_all_counted(store: Store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that differ from stored ones in the first and the last batch: the first is named, both
    counted, nothing written; with replace both are written."""
    import_frame(store, synthetic(50), "s")
    read_in_small_batches(monkeypatch)
    before = snapshot(store)
    changed = synthetic(50)
    for row in (2, 599):
        changed = set_cell(changed, "ntk_alignment", row, 0.25)
    path = tmp_path / "changed.csv"
    changed.write_csv(path)
    with pytest.raises(InvalidSpecError, match=r"^changed\.csv row 2, column 'ntk_alignment': step 2 of this run is "
                                              r"0\.5 in the store and 0\.25 here \(2 of the file's values differ"):
        import_file(store, path, "s")
    assert snapshot(store) == before
    rep = import_file(store, path, "s", replace=True)
    assert (rep.replaced, rep.new_runs, rep.values) == (2, 0, 1800)
    got = store.read("SELECT COUNT(*) AS n FROM metric_series WHERE metric = 'ntk_alignment' AND value = 0.25")
    assert got["n"][0] == 2


def count(store: Store, table: str) -> int:
    return int(store.read(f"SELECT COUNT(*) AS n FROM {table}")["n"][0])


def _writing(store: Store, wal: Path, wal_before: int, probe: object) -> bool:
    """Whether another process has written values in a transaction it holds open: on SQLite the WAL
    grew by a MiB (pages of a transaction spill there long before it commits); on PostgreSQL a backend
    holds the write lock on metric_chunks that its COPY or DELETE took (until the transaction ends)."""
    if store.backend == "sqlite":
        return wal.exists() and wal.stat().st_size > wal_before + 2**20
    rows = probe.execute(  # type: ignore[attr-defined]
        "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND relation = 'metric_chunks'::regclass AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()").fetchone()
    return rows[0] > 0


def _feed(fifo: Path, data: bytes, stop: threading.Event, fed: list[int]) -> None:
    """Write ``data`` into ``fifo`` piece by piece until ``stop`` is set, and hold the FIFO open until
    then: its reader never sees the end of its file while the test runs."""
    try:
        with open(fifo, "wb") as f:  # blocks until the import opens the FIFO
            for i in range(0, len(data), 2**18):
                if stop.is_set():
                    break
                f.write(data[i:i + 2**18])
                f.flush()
                fed[0] = min(len(data), i + 2**18)
            stop.wait()
    except OSError:  # BrokenPipeError: the import is gone
        pass


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_sigkill_mid_import_leaves_the_store_as_it_was(store_url: str, tmp_path: Path, sig: int) -> None:
    """An import killed (or interrupted by Ctrl-C) after it has written values: the store is exactly
    as before. The CSV comes through a FIFO that the test feeds only until the import has written
    (so it streams: it writes before its file ends), then signals it while it waits for the rest: the
    signal always lands mid-import. 16 of its 80 runs existed (their first steps). Ctrl-C says the
    import was rolled back, exit 130."""
    import numpy as np

    n_runs, n_steps = 80, 10_000
    run = np.repeat(np.arange(n_runs), n_steps)
    step = np.tile(np.arange(1, n_steps + 1), n_runs)
    big = pl.DataFrame({"gamma": 0.5 + run % 8, "eta": 0.01 * (1 + run // 8), "seed": 0, "step": step,
                        "loss": 1 / (1 + 0.01 * step), "weight_change.l1": 1e-3 * step, "feature_alignment": 0.5})
    data = big.write_csv().encode()
    store = Store.open(store_url)
    early = big.filter((pl.col("eta") < 0.03) & (pl.col("step") <= 10))
    import_frame(store, early, "big")
    import_frame(store, synthetic(5), "other")
    before = snapshot(store, values=False)
    values_before = count(store, "metric_values")
    assert (values_before, count(store, "runs")) == (3 * (early.height + 12 * 5), 16 + 12)
    wal = Path(str(sqlite_path(store.url)) + "-wal") if store.backend == "sqlite" else Path("/nonexistent")
    wal_before = wal.stat().st_size if wal.exists() else 0
    probe = None
    if store.backend == "postgresql":
        probe = store.raw_connection()
        probe.autocommit = True
    fifo = tmp_path / "big.csv"
    os.mkfifo(fifo)
    stop, fed = threading.Event(), [0]
    feeder = threading.Thread(target=_feed, args=(fifo, data, stop, fed), daemon=True)
    feeder.start()

    proc = subprocess.Popen([sys.executable, "-m", "gammadb", "import", str(fifo), "--sweep", "big", "--url",
                             store_url], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _writing(store, wal, wal_before, probe):
            assert proc.poll() is None, f"the import ended: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, f"the import wrote nothing after {fed[0]} of {len(data)} bytes"
            time.sleep(0.01)
        stop.set()
        assert fed[0] < len(data), "the import wrote only once it had the whole file: it does not stream"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        if feeder.is_alive():  # still opening the FIFO: open its other end so that it returns
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        feeder.join(10)
        if probe is not None:
            probe.close()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, err
    else:
        assert proc.returncode == 130, err
        assert err.strip() == "interrupted: the import was rolled back; the store is as it was", err

    # It never had the end of its file, so it never committed: the store is exactly as before.
    assert snapshot(store, values=False) == before
    assert count(store, "metric_values") == values_before
    # The store takes the next import as usual.
    assert import_frame(store, synthetic(5), "other").new_runs == 0
    store.close()
