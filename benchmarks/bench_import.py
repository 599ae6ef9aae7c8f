"""`gammadb import` against raw sqlite3 executemany of the same values, and its peak memory.

    python benchmarks/bench_import.py [--runs 500] [--steps 10000] [--scale 4] [--formats parquet,csv]

Builds a sweep file of RUNS runs x STEPS steps x 1 metric (loss), as Parquet and CSV, and measures,
each in a fresh process on a fresh SQLite file:

  raw      sqlite3 ``executemany`` of the same values as one row per value, ``INSERT INTO
           metric_values(run_id, metric_id, step, value)`` into a WITHOUT ROWID table keyed by
           (run_id, metric_id, step) (the layout before chunks), one transaction, WAL and
           synchronous=NORMAL as the store sets them; the rows are built before the clock starts;
  import   ``gammadb.transfer.import_file`` of each file (what ``gammadb import`` calls): read,
           validate, write, summarise, commit.

Printed: seconds, values/s and the ratio import / raw (target >= 1), and the peak RSS of each import
process (VmHWM: ``ru_maxrss`` of that process alone) and of the same process before the import
(modules loaded). Then the memory check: the same imports of a file SCALE times longer; the peak
should not grow with the file (the growth per row, if any, gives the extrapolated peak of a 100 M-row
file; target < 2 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RAW_DDL = ("CREATE TABLE metric_values (run_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, step INTEGER NOT NULL, "
           "value REAL, PRIMARY KEY (run_id, metric_id, step)) WITHOUT ROWID")
TARGET_ROWS = 100_000_000


def make_file(path: Path, runs: int, steps: int) -> None:
    """RUNS runs (a gamma x eta grid) x STEPS steps, sorted by run then step, random losses (seeded)."""
    import numpy as np
    import polars as pl

    run = np.repeat(np.arange(runs, dtype=np.int64), steps)
    rng = np.random.default_rng(0)
    df = pl.DataFrame({"gamma": 0.5 + run % 20, "eta": 0.01 * (1 + run // 20), "seed": np.zeros(run.size, dtype=np.int64),
                       "step": np.tile(np.arange(1, steps + 1, dtype=np.int64), runs), "loss": rng.random(run.size)})
    if path.suffix == ".parquet":
        df.write_parquet(path)
    else:
        df.write_csv(path)


def rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM where Linux gives it (ru_maxrss survives the exec of a
    child process, so it can be the parent's peak), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------- children
def child_raw(path: Path, db: Path) -> dict:
    import polars as pl

    df = pl.read_parquet(path)
    points = df.select("gamma", "eta", "seed").unique(maintain_order=True).with_row_index("run_id", offset=1)
    df = df.join(points, on=["gamma", "eta", "seed"], maintain_order="left")
    rows = list(zip(df["run_id"].to_list(), [1] * df.height, df["step"].to_list(), df["loss"].to_list()))
    del df
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(RAW_DDL)
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for i in range(0, len(rows), 100_000):
        conn.executemany("INSERT INTO metric_values (run_id, metric_id, step, value) VALUES (?, ?, ?, ?)",
                         rows[i:i + 100_000])
    conn.execute("COMMIT")
    seconds = time.perf_counter() - t0
    n = conn.execute("SELECT COUNT(*) FROM metric_values").fetchone()[0]
    conn.close()
    return {"seconds": seconds, "values": n}


def child_import(path: Path, db: Path) -> dict:
    from gammadb.store import Store
    from gammadb.transfer import import_file

    store = Store.open(f"sqlite:///{db}")
    before = rss_mb()
    t0 = time.perf_counter()
    rep = import_file(store, path, "bench")
    seconds = time.perf_counter() - t0
    peak = rss_mb()
    n = int(store.read("SELECT SUM(n) AS n FROM metric_chunks")["n"][0])
    store.close()
    return {"seconds": seconds, "values": n, "reported": rep.values, "rss_before_mb": before, "peak_mb": peak}


def run_child(kind: str, path: Path, tmp: Path) -> dict:
    db = tmp / f"{kind}-{path.stem}-{path.suffix[1:]}.sqlite"
    for f in tmp.glob(db.name + "*"):
        f.unlink()
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(db)], check=True,
                         capture_output=True, text=True)
    for f in tmp.glob(db.name + "*"):
        f.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--scale", type=int, default=4, help="the memory check's file is this many times longer")
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "FILE", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, db = args.child
        print(json.dumps((child_raw if kind == "raw" else child_import)(Path(path), Path(db))))
        return

    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        sizes = [args.runs, args.runs * args.scale] if args.scale > 1 else [args.runs]
        files = {}
        for runs in sizes:
            for fmt in formats:
                files[runs, fmt] = tmp / f"sweep_{runs}.{fmt}"
                make_file(files[runs, fmt], runs, args.steps)
        n = args.runs * args.steps
        print(f"{args.runs} runs x {args.steps:,} steps x 1 metric = {n:,} values; SQLite; each measure a fresh process")
        if "parquet" not in formats:
            make_file(tmp / "raw.parquet", args.runs, args.steps)
        raw = run_child("raw", files.get((args.runs, "parquet"), tmp / "raw.parquet"), tmp)
        assert raw["values"] == n, raw
        raw_rate = n / raw["seconds"]
        print(f"  raw executemany, row per value : {raw['seconds']:7.2f} s  {raw_rate / 1e6:6.2f} M values/s")
        peaks: dict[tuple[int, str], dict] = {}
        for (runs, fmt), path in files.items():
            got = run_child("import", path, tmp)
            assert got["values"] == got["reported"] == runs * args.steps, got
            peaks[runs, fmt] = got
            rate = got["values"] / got["seconds"]
            size = path.stat().st_size / 2**20
            print(f"  gammadb import {fmt:<7} {got['values'] / 1e6:5.1f} M rows ({size:5.0f} MiB): {got['seconds']:7.2f} s  "
                  f"{rate / 1e6:6.2f} M values/s  ratio to raw {rate / raw_rate:5.2f} (target >= 1)  "
                  f"peak RSS {got['peak_mb']:5.0f} MB (modules loaded: {got['rss_before_mb']:4.0f} MB)")
        if len(sizes) == 2:
            small, big = sizes
            print(f"memory check: peak RSS of the import, {small * args.steps / 1e6:g} M vs {big * args.steps / 1e6:g} M rows")
            for fmt in formats:
                a, b = peaks[small, fmt]["peak_mb"], peaks[big, fmt]["peak_mb"]
                per_row = max(0.0, (b - a) * 2**20 / ((big - small) * args.steps))
                at_target = b + per_row * (TARGET_ROWS - big * args.steps) / 2**20
                print(f"  {fmt:<7} {a:5.0f} MB -> {b:5.0f} MB ({b - a:+.0f} MB, {per_row:.2f} bytes a row); "
                      f"extrapolated to {TARGET_ROWS / 1e6:.0f} M rows: {at_target:5.0f} MB (target < 2048)")


if __name__ == "__main__":
    main()
