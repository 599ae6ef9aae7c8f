"""The store at GPU rates: the chunked layout of per-step series against one row per value.

    python benchmarks/bench_store_layout.py [--members 256] [--steps 4000]
    GAMMADB_BENCH_PG_URL=postgresql+psycopg://... python benchmarks/bench_store_layout.py   # + 4 writers

Everything printed is measured in this run, on fresh stores under a temporary directory:

1. write: an ensemble-shaped stream (K members x 5 values a step: loss, weight change of 3 layers,
   feature alignment), handed to ``MetricWriter.log_block`` one step at a time as ``train_ensemble``
   does, timed from the first call to the last commit. Against it, the row-per-value layout this
   replaced (revision 0003's ``metric_values``: a clustered (run_id, metric_id, step) key, one
   upsert per value through ``executemany``), fed the same values.
   With ``GAMMADB_BENCH_PG_URL``: 4 writer processes into one PostgreSQL, K members each, the values
   per second of all four together, against 4 processes upserting one row per value through binary
   COPY into a staging table (the 0003 writer's path).
2. size: bytes per stored value of the SQLite file after VACUUM (float64 blobs; float32 would halve
   the blob but not the per-row keys).
3. read: every loss series of a 500-run x 10,000-step sweep into numpy/polars (``values_frame``),
   values per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gammadb.metrics import LOSS, MetricKey  # noqa: E402
from gammadb.store import Store  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_log_path import KEYS, _runs  # noqa: E402  the same ensemble-shaped runs and 5 values

OLD_TABLE = ("CREATE TABLE metric_values (run_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, step INTEGER NOT NULL, "
             "value REAL, PRIMARY KEY (run_id, metric_id, step)) WITHOUT ROWID")
OLD_UPSERT = ("INSERT INTO metric_values (run_id, metric_id, step, value) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (run_id, metric_id, step) DO UPDATE SET value = excluded.value")


def _stream(k: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((steps, k, len(KEYS)))


def write_chunked(url: str, name: str, k: int, steps: int, barrier: Any = None) -> tuple[float, float]:
    """Wall-clock (start, end) of logging and committing ``steps`` ensemble steps of ``k`` members;
    with ``barrier``, the start waits for every writer process to be ready."""
    with Store.open(url) as store:
        ids = _runs(store, name, k, steps)
        data = _stream(k, steps)
        if barrier is not None:
            barrier.wait()
        t0 = time.time()
        with store.writer() as w:
            for t in range(steps):
                w.log_block(t, ids, KEYS, data[t])
        return t0, time.time()


def write_rows_sqlite(path: Path, k: int, steps: int) -> float:
    """Seconds for the 0003 layout's path: one upsert per value, batches of 20,000 rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(OLD_TABLE)
    data = _stream(k, steps)
    t0 = time.perf_counter()
    batch: list[tuple[int, int, int, float]] = []
    for t in range(steps):
        batch.extend((run, m, t, v) for run, row in enumerate(data[t].tolist()) for m, v in enumerate(row))
        if len(batch) >= 20_000:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(OLD_UPSERT, batch)
            conn.execute("COMMIT")
            batch = []
    if batch:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(OLD_UPSERT, batch)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds


def _pg_worker(url: str, name: str, k: int, steps: int, old: bool, barrier: Any, out: Any) -> None:
    out.put(_pg_rows(url, name, k, steps, barrier) if old else write_chunked(url, name, k, steps, barrier))


def _pg_rows(url: str, name: str, k: int, steps: int, barrier: Any) -> tuple[float, float]:
    """The 0003 writer's PostgreSQL path: binary COPY into a staging table, one upsert per value."""
    import psycopg

    from gammadb.urls import libpq_uri, parse_url

    conn = psycopg.connect(libpq_uri(parse_url(url)))
    table = f"old_{name}"
    conn.execute(f"CREATE UNLOGGED TABLE IF NOT EXISTS {table} (run_id int4, metric_id int2, step int8, value float8, "
                 "PRIMARY KEY (run_id, metric_id, step))")
    conn.commit()
    data = _stream(k, steps)
    barrier.wait()
    t0 = time.time()
    for lo in range(0, steps, 16):
        with conn.transaction():
            cur = conn.cursor()
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS stage (run_id int4, metric_id int2, step int8, value float8) "
                        "ON COMMIT DELETE ROWS")
            with cur.copy("COPY stage FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "int2", "int8", "float8"])
                for t in range(lo, min(lo + 16, steps)):
                    for run, row in enumerate(data[t].tolist()):
                        for m, v in enumerate(row):
                            cp.write_row((run, m, t, v))
            cur.execute(f"INSERT INTO {table} SELECT * FROM stage ON CONFLICT (run_id, metric_id, step) "
                        "DO UPDATE SET value = EXCLUDED.value")
    t1 = time.time()
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    return t0, t1


def pg_writers(url: str, k: int, steps: int, old: bool, n: int = 4) -> float:
    """Values per second of ``n`` writer processes together: all values over the span from the first
    start to the last commit (each process sets up, then all start together at a barrier)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_pg_worker, args=(url, f"w{i}_{int(old)}_{os.getpid()}", k, steps, old, barrier, out))
             for i in range(n)]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return n * k * steps * len(KEYS) / wall


def read_sweep(url: str, runs: int, steps: int) -> tuple[float, int]:
    """Seconds to read every loss series of a runs x steps sweep with values_frame, and the values."""
    with Store.open(url) as store:
        ids = _runs(store, "read", runs, steps)
        loss = store.metric_ids([MetricKey(LOSS)])[MetricKey(LOSS)]
        curve = 1.0 / (1.0 + np.arange(steps))
        with store.writer() as w:
            for i in range(0, runs, 50):
                part = ids[i:i + 50]
                for t in range(steps):
                    w.log_block(t, part, [MetricKey(LOSS)], (curve[t] * np.ones((len(part), 1))))
        store.metric_ids([MetricKey(LOSS)])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            frame = store.values_frame(ids, loss)
            best = min(best, time.perf_counter() - t0)
        return best, frame.height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--old-steps", type=int, default=400, help="steps fed to the row-per-value baselines")
    ap.add_argument("--read-runs", type=int, default=500)
    ap.add_argument("--read-steps", type=int, default=10_000)
    args = ap.parse_args()
    k, steps = args.members, args.steps
    values = k * steps * len(KEYS)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "w.sqlite"
        start, end = write_chunked(f"sqlite:///{db}", "w", k, steps)
        new = values / (end - start)
        old = k * args.old_steps * len(KEYS) / write_rows_sqlite(Path(tmp) / "old.sqlite", k, args.old_steps)
        print(f"write, SQLite, K = {k}, 5 values a member-step: chunked {new / 1e6:.2f} M values/s "
              f"({new / (k * len(KEYS)):,.0f} ensemble steps/s); row per value {old / 1e6:.3f} M values/s; "
              f"ratio {new / old:.1f}x (target: >= 5 M values/s)")
        conn = sqlite3.connect(db)
        conn.execute("VACUUM")
        conn.close()
        size = db.stat().st_size
        old_size = (Path(tmp) / "old.sqlite")
        c2 = sqlite3.connect(old_size)
        c2.execute("VACUUM")
        c2.close()
        print(f"size, SQLite after VACUUM: chunked {size / values:.2f} bytes/value; row per value "
              f"{old_size.stat().st_size / (k * args.old_steps * len(KEYS)):.2f} (target: <= 10); float32 blobs "
              f"would save 4 bytes/value of the 8 (to about {size / values - 4:.1f})")
        rdb = Path(tmp) / "r.sqlite"
        seconds, n = read_sweep(f"sqlite:///{rdb}", args.read_runs, args.read_steps)
        print(f"read, SQLite: every loss series of {args.read_runs} runs x {args.read_steps:,} steps "
              f"({n:,} values) in {seconds:.3f} s = {n / seconds / 1e6:.0f} M values/s (target: >= 50 M)")
        pg = os.environ.get("GAMMADB_BENCH_PG_URL")
        if pg:
            Store.open(pg).close()
            new_pg = pg_writers(pg, k, steps // 2, old=False)
            old_pg = pg_writers(pg, k, args.old_steps // 2, old=True)
            print(f"write, PostgreSQL, 4 writer processes x K = {k}: chunked {new_pg / 1e6:.2f} M values/s in all; "
                  f"row per value (binary COPY + upsert) {old_pg / 1e6:.3f} M values/s; ratio {new_pg / old_pg:.1f}x "
                  "(target: >= 5 M values/s)")
            seconds, n = read_sweep(pg, args.read_runs, args.read_steps)
            print(f"read, PostgreSQL: {n:,} values in {seconds:.3f} s = {n / seconds / 1e6:.0f} M values/s")
        else:
            print("PostgreSQL: set GAMMADB_BENCH_PG_URL to measure 4 writers into one server")


if __name__ == "__main__":
    main()
