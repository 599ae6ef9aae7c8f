"""Ingestion: gammadb's writer vs the driver's own bulk path, in one process run.

Prints, for SQLite (and PostgreSQL when GAMMADB_BENCH_PG_URL is set):
- writer rows/s on N metric rows divided by raw executemany / COPY of the same rows into the same
  table. Targets: >= 0.7 (SQLite), >= 0.5 (PostgreSQL). SQLite is measured twice: the writer fed the
  same row list (``write_rows``, like for like), and fed as training feeds it (``log`` once per step
  with a dict of 5 metrics), which adds the Python cost of building the rows.
- bytes on disk per stored value (SQLite). Target: <= 25.
- `gammadb import` of a Parquet file of N rows: rows/s.

Usage: python benchmarks/vs_raw.py [--rows 2000000]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from gammadb.metrics import LOSS, WEIGHT_CHANGE, MetricKey
from gammadb.records import RunSpec
from gammadb.store import Store

KEYS = [MetricKey(LOSS), MetricKey("feature_alignment"), *(MetricKey(WEIGHT_CHANGE, l) for l in (1, 2, 3))]


def make_store(url: str, n_runs: int) -> tuple[Store, list[int]]:
    store = Store.open(url)
    sweep = store.ensure_sweep(f"bench-{random.random()}", {})
    specs = [RunSpec("mlp", "teacher", "mse", "sgd", 3, 256, 128, 1.0, 0.01 * (i + 1), 0, "float32", 0, {"i": i})
             for i in range(n_runs)]
    return store, [r.id for r in store.ensure_runs(sweep.id, specs)]


def steps_per_run(n_rows: int, n_runs: int) -> int:
    return n_rows // (n_runs * len(KEYS))


def writer_rate(store: Store, run_ids: list[int], steps: int) -> float:
    rnd = random.Random(0)
    values = [rnd.random() for _ in range(1024)]
    t0 = time.perf_counter()
    with store.writer(batch_rows=50_000) as w:
        for run_id in run_ids:
            for step in range(1, steps + 1):
                v = values[step & 1023]
                w.log(run_id, step, {k: v for k in KEYS})
    dt = time.perf_counter() - t0
    return len(run_ids) * steps * len(KEYS) / dt


def writer_rows_rate(store: Store, rows: list[tuple]) -> float:
    """The writer fed the very rows raw executemany gets (the storage paths compared like for like)."""
    t0 = time.perf_counter()
    with store.writer(batch_rows=50_000) as w:
        for i in range(0, len(rows), 50_000):
            w.write_rows(rows[i:i + 50_000])
    return len(rows) / (time.perf_counter() - t0)


# The row-per-value table of revision 0003: what "raw executemany" means here, as before.
RAW_TABLE = ("CREATE TABLE IF NOT EXISTS raw_values (run_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, "
             "step INTEGER NOT NULL, value REAL, PRIMARY KEY (run_id, metric_id, step)) WITHOUT ROWID")


def raw_rows(run_ids: list[int], steps: int, metric_ids: list[int]) -> list[tuple]:
    rnd = random.Random(0)
    values = [rnd.random() for _ in range(1024)]
    return [(r, m, s, values[s & 1023]) for r in run_ids for s in range(1, steps + 1) for m in metric_ids]


def raw_sqlite_rate(path: Path, rows: list[tuple]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(RAW_TABLE)
    t0 = time.perf_counter()
    for i in range(0, len(rows), 50_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO raw_values VALUES (?, ?, ?, ?)", rows[i:i + 50_000])
        conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    return len(rows) / dt


def raw_pg_rate(store: Store, rows: list[tuple]) -> float:
    conn = store.raw_connection()
    conn.execute("DROP TABLE IF EXISTS raw_values")
    conn.execute(RAW_TABLE.replace(" WITHOUT ROWID", "").replace("INTEGER", "int8").replace("REAL", "float8"))
    conn.commit()
    t0 = time.perf_counter()
    for i in range(0, len(rows), 50_000):
        with conn.transaction():
            with conn.cursor().copy("COPY raw_values (run_id, metric_id, step, value) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "int8", "int8", "float8"])
                for row in rows[i:i + 50_000]:
                    cp.write_row(row)
    dt = time.perf_counter() - t0
    conn.execute("DROP TABLE raw_values")
    conn.commit()
    conn.close()
    return len(rows) / dt


def bench_sqlite(n_rows: int, tmp: Path) -> None:
    n_runs = 20
    steps = steps_per_run(n_rows, n_runs)
    store, ids = make_store(f"sqlite:///{tmp / 'writer.sqlite'}", n_runs)
    w = writer_rate(store, ids, steps)
    store.engine.dispose()
    conn = sqlite3.connect(tmp / "writer.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages, page_size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
    n_values = conn.execute("SELECT SUM(n) FROM metric_chunks").fetchone()[0]
    # bytes of the metric_chunks table alone (dbstat may be missing: fall back to the file size)
    try:
        table_bytes = conn.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = 'metric_chunks'").fetchone()[0]
    except sqlite3.OperationalError:
        table_bytes = pages * page_size
    conn.close()

    rows_store, rows_ids = make_store(f"sqlite:///{tmp / 'rows.sqlite'}", n_runs)
    mids = list(rows_store.metric_ids(KEYS).values())
    wr = writer_rows_rate(rows_store, raw_rows(rows_ids, steps, mids))
    rows_store.close()
    raw_store, raw_ids = make_store(f"sqlite:///{tmp / 'raw.sqlite'}", n_runs)
    raw_store.close()
    rows = raw_rows(raw_ids, steps, mids)
    r = raw_sqlite_rate(tmp / "raw.sqlite", rows)
    print(f"sqlite  writer.write_rows {wr:,.0f} rows/s | raw executemany {r:,.0f} rows/s | ratio {wr / r:.2f} "
          f"(target >= 0.70)")
    print(f"sqlite  writer.log per step (as training calls it) {w:,.0f} rows/s | ratio {w / r:.2f}")
    print(f"sqlite  bytes per stored value: {table_bytes / n_values:.1f} (target <= 10; file {pages * page_size / n_values:.1f})")


def bench_pg(url: str, n_rows: int) -> None:
    n_runs = 20
    steps = steps_per_run(n_rows, n_runs)
    store, ids = make_store(url, n_runs)
    w = writer_rate(store, ids, steps)
    store2, ids2 = make_store(url, n_runs)
    rows = raw_rows(ids2, steps, list(store2.metric_ids(KEYS).values()))
    r = raw_pg_rate(store2, rows)
    print(f"postgres writer {w:,.0f} rows/s | raw binary COPY {r:,.0f} rows/s | ratio {w / r:.2f} (target >= 0.50)")
    for s in (store, store2):
        s.delete_sweep(s.sweeps_frame()["name"][-1])
        s.close()


def bench_import(n_rows: int, tmp: Path) -> None:
    import polars as pl

    from gammadb.transfer import import_file

    n_runs = 100
    steps = n_rows // n_runs
    df = pl.DataFrame({
        "gamma": pl.Series([float(1 + i % 10) for i in range(n_runs)]).repeat_by(steps).explode(),
        "eta": pl.Series([0.01 * (1 + i // 10) for i in range(n_runs)]).repeat_by(steps).explode(),
    }).with_columns(
        pl.lit(0).alias("seed"),
        (pl.int_range(pl.len()) % steps + 1).alias("step"),
        (1.0 / (1 + pl.int_range(pl.len()) % steps)).alias("loss"),
    )
    path = tmp / "import.parquet"
    df.write_parquet(path)
    store = Store.open(f"sqlite:///{tmp / 'import.sqlite'}")
    t0 = time.perf_counter()
    rep = import_file(store, path, "imported")
    dt = time.perf_counter() - t0
    print(f"import  {rep.rows:,} rows ({rep.values:,} values) in {dt:.1f} s: {rep.rows / dt:,.0f} rows/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_sqlite(args.rows, tmp)
        pg = os.environ.get("GAMMADB_BENCH_PG_URL") or os.environ.get("GAMMADB_TEST_PG_URL")
        if pg:
            bench_pg(pg, args.rows)
        else:
            print("postgres skipped: set GAMMADB_BENCH_PG_URL")
        bench_import(args.rows, tmp)


if __name__ == "__main__":
    main()
