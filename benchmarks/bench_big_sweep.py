"""What a user waits for on a big sweep: 500 runs x 10,000 steps (5 M loss values).

    python benchmarks/bench_big_sweep.py [--runs 500] [--steps 10000] [--url URL]

Builds the sweep of ``bench_optimal_lr.py`` (a gamma x eta grid, 2 seeds, a few diverged runs) in a
fresh store (SQLite in a temporary directory unless ``--url``), then times, each in a fresh process
as a user runs it (so imports and the store opening count): ``gammadb plot curves``, ``gammadb
report`` and ``gammadb analyze optimal-lr``, each first with the store's cache of bucketed series as
the sweep left it (every run's loss bucketed on the 40 grid where its summary was written: what the
first command after a sweep finds), then ``--repeat`` times (the median: the cache as the commands
left it), then once with the cache emptied (a store whose runs ended before the fill at a run's end,
or a cache dropped by hand); the time the fill took for the whole sweep; and the dashboard's sweep page with every chart it
loads (``gammadb ui``'s app through its test client, after the warm-up ``gammadb ui`` does at start:
server time, no browser), each request first, then all again (cached). Targets (issues 16 and 17): plot curves and report < 2 s each, the sweep page < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_optimal_lr import SWEEP, build  # noqa: E402


def cli_seconds(*args: str) -> float:
    # as a user's Python runs it: with the bytecode cache (some sandboxes turn it off)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gammadb", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"gammadb {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    return seconds


_COLUMNS = "run_id, metric_id, per_decade, layout, version, buckets"


def bucket_cache(url: str) -> list[tuple]:
    """The rows of the store's cache of bucketed series (``series_buckets``)."""
    from sqlalchemy import text

    from gammadb.store import Store

    with Store.open(url) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT {_COLUMNS} FROM series_buckets"))]


def set_bucket_cache(url: str, rows: list[tuple]) -> None:
    """Make the cache hold exactly ``rows`` (none: every grid a command draws is computed)."""
    from sqlalchemy import text

    from gammadb.store import Store

    with Store.open(url) as store, store.engine.begin() as conn:
        conn.execute(text("DELETE FROM series_buckets"))
        if rows:
            conn.execute(text(f"INSERT INTO series_buckets ({_COLUMNS}) VALUES (:r, :m, :p, :l, :v, :b)"),
                         [dict(zip("rmplvb", row)) for row in rows])


def timed(args: tuple[str, ...], url: str, repeat: int, after_sweep: list[tuple]) -> tuple[float, float, float]:
    """Seconds of the first run with the cache as the sweep left it, the median of ``repeat`` runs
    after it, and one run with the cache emptied."""
    set_bucket_cache(url, after_sweep)
    first = cli_seconds(*args)
    warm = statistics.median(cli_seconds(*args) for _ in range(repeat))
    set_bucket_cache(url, [])
    return first, warm, cli_seconds(*args)


def fill_seconds(url: str) -> tuple[float, int]:
    """Seconds to bucket and cache every run's loss from an empty cache (what the sweep's run ends
    spent on it in all, in one call here), and how many runs."""
    from gammadb.store import Store

    set_bucket_cache(url, [])
    with Store.open(url) as store:
        ids = store.runs_frame(SWEEP)["run_id"].to_list()
        t0 = time.perf_counter()
        n = store.cache_loss_buckets(ids)
        return time.perf_counter() - t0, n


def page_seconds(url: str) -> tuple[float, dict[str, float], float]:
    """Server seconds of the sweep page and of each chart and fragment it loads (each its own request,
    as the browser sends them), first requests after the server's warm-up (what ``gammadb ui`` does
    at start: imports and the Vega bundle); and all of them again, warm."""
    import re

    from starlette.testclient import TestClient

    from gammadb.ui.app import create_app, warm_up

    warm_up()
    with TestClient(create_app(url)) as client:
        def get(path: str) -> float:
            t0 = time.perf_counter()
            got = client.get(path)
            seconds = time.perf_counter() - t0
            assert got.status_code == 200, (path, got.text[:300])
            return seconds

        t0 = time.perf_counter()
        page = client.get(f"/sweeps/{SWEEP}")
        first = time.perf_counter() - t0
        paths = sorted(set(re.findall(r'data-(?:chart|fragment)-src="(/[^"]+)"', page.text)))
        parts = {path: get(path) for path in [f"/api/sweeps/{SWEEP}", *paths]}
        t0 = time.perf_counter()
        get(f"/sweeps/{SWEEP}")
        for path in parts:
            get(path)
        warm = time.perf_counter() - t0
    return first, parts, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="Runs of each command after the first (median).")
    args = ap.parse_args()
    from gammadb.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'big.sqlite'}"
        with Store.open(url) as store:
            if SWEEP not in store.sweeps_frame()["name"].to_list():
                build(store, args.runs, args.steps)
            n = store.read("SELECT SUM(n) AS n FROM metric_chunks")["n"][0]
        print(f"sweep {SWEEP}: {args.runs} runs x {args.steps:,} steps, {n:,} values")
        out = Path(tmp)
        base = cli_seconds("--version")
        print(f"python -m gammadb --version (start-up alone): {base:.2f} s")
        seconds, n_runs = fill_seconds(url)
        after_sweep = bucket_cache(url)
        cache_bytes = sum(len(row[-1]) for row in after_sweep)
        print(f"bucketing and caching the loss of {n_runs} runs (done where each run's summary is written): "
              f"{seconds:.2f} s in all, {1000 * seconds / max(n_runs, 1):.1f} ms a run; the cached buckets "
              f"take {cache_bytes / 1e6:.1f} MB, {cache_bytes / n:.2f} bytes per stored value")
        for name, cmd in (
            ("plot curves", ("plot", "curves", "--sweep", SWEEP, "--out", str(out / "c.html"), "--url", url)),
            ("report", ("report", "--sweep", SWEEP, "--out", str(out / "r.html"), "--url", url)),
            ("analyze optimal-lr", ("analyze", "optimal-lr", "--sweep", SWEEP, "--url", url)),
        ):
            first, warm, cold = timed(cmd, url, args.repeat, after_sweep)
            print(f"gammadb {name}: {first:.2f} s the first time after the sweep, then {warm:.2f} s (median of "
                  f"{args.repeat})" + (" (target < 2 s)" if name != "analyze optimal-lr" else "")
                  + f"; {cold:.2f} s with the bucket cache emptied")
        first, parts, warm = page_seconds(url)
        print(f"ui sweep page, server time of its first request: {first:.2f} s (target < 1 s); then each request "
              "it makes, first time: " + ", ".join(f"{p.rsplit('/', 1)[-1]} {t:.2f} s" for p, t in parts.items())
              + f"; the page and all of them again (cached): {warm:.2f} s")


if __name__ == "__main__":
    main()
