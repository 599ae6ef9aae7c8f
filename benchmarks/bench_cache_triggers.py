"""What the bucket cache's triggers cost the writer (migration 0005).

    python benchmarks/bench_cache_triggers.py [--members 256] [--steps 2000] [--rounds 3]
    GAMMADB_BENCH_PG_URL=postgresql+psycopg://... python benchmarks/bench_cache_triggers.py   # + 4 writers

The ensemble-shaped stream of ``bench_store_layout.py`` (K members x 5 values a step, through
``MetricWriter.log_block``) into fresh stores with the ``run_versions`` triggers on ``metric_chunks``
and into stores where they were dropped, alternating, ``--rounds`` times each: the median values per
second of each and their ratio, measured in this run. With ``GAMMADB_BENCH_PG_URL``, the same for 4
writer processes into one PostgreSQL server (a fresh database each time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_log_path import KEYS  # noqa: E402
from bench_store_layout import pg_writers, write_chunked  # noqa: E402

from gammadb.store import Store  # noqa: E402

TRIGGERS = ("series_written_insert", "series_written_update", "series_written_delete")


def drop_triggers(url: str) -> None:
    with Store.open(url) as store, store.engine.begin() as conn:
        on = " ON metric_chunks" if store.backend == "postgresql" else ""
        for name in TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER {name}{on}")


def sqlite_rate(tmp: Path, tag: str, k: int, steps: int, triggers: bool) -> float:
    url = f"sqlite:///{tmp / f'{tag}.sqlite'}"
    Store.open(url).close()
    if not triggers:
        drop_triggers(url)
    start, end = write_chunked(url, "w", k, steps)
    return k * steps * len(KEYS) / (end - start)


def pg_rate(base: str, tag: str, k: int, steps: int, triggers: bool) -> float:
    import psycopg
    from sqlalchemy.engine import make_url

    from gammadb.urls import libpq_uri

    admin = make_url(base)
    name = f"gammadb_bench_trig_{tag}"
    with psycopg.connect(libpq_uri(admin), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        Store.open(url).close()
        if not triggers:
            drop_triggers(url)
        return pg_writers(url, k, steps, old=False)
    finally:
        with psycopg.connect(libpq_uri(admin), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def report(what: str, on: list[float], off: list[float]) -> None:
    a, b = statistics.median(on), statistics.median(off)
    print(f"{what}: with the triggers {a / 1e6:.2f} M values/s, without {b / 1e6:.2f} M values/s "
          f"(medians of {len(on)}); with / without = {a / b:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    k, steps = args.members, args.steps
    on: list[float] = []
    off: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            on.append(sqlite_rate(Path(tmp), f"on{r}", k, steps, True))
            off.append(sqlite_rate(Path(tmp), f"off{r}", k, steps, False))
    report(f"SQLite, K = {k}, {steps} steps", on, off)
    pg = os.environ.get("GAMMADB_BENCH_PG_URL")
    if pg:
        on, off = [], []
        for r in range(args.rounds):
            on.append(pg_rate(pg, f"on{r}", k, steps // 2, True))
            off.append(pg_rate(pg, f"off{r}", k, steps // 2, False))
        report(f"PostgreSQL, 4 writers x K = {k}", on, off)
    else:
        print("PostgreSQL: set GAMMADB_BENCH_PG_URL to measure 4 writers into one server")


if __name__ == "__main__":
    main()
