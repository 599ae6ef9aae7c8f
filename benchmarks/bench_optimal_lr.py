"""Benchmark: `gammadb analyze optimal-lr` against one raw SQL aggregate over the same rows.

Builds (or reuses) a store holding one sweep of RUNS runs x STEPS steps of training loss (default
500 x 10,000 = 5M values; a few runs diverge), then times, in one warm process:

- the baseline: one raw read of the sweep's loss chunks (up to the budget) through the driver,
  decoded with numpy and averaged per run (the least any per-run answer over those values costs),
  timed alternately with each case;
- ``gammadb analyze optimal-lr --json`` (CliRunner, so store opening, analysis, bootstrap, fits and
  JSON printing all count) at the default budget (served from the run summaries) and at an
  explicit mid-run budget and with ``--criterion min`` (per-run GROUP BY in SQL).

It prints each median time and its ratio to the baseline. (The former acceptance target, ratio <= 2, was set
against the 0003 layout's SQL aggregate over one row per value, which this raw chunk read beats 3-6x.)

    python benchmarks/bench_optimal_lr.py                       # SQLite in a temp dir
    python benchmarks/bench_optimal_lr.py --url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    python benchmarks/bench_optimal_lr.py --runs 100 --steps 2000  # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SWEEP = "bench-optimal-lr"


def build(store, runs: int, steps: int) -> None:
    from gammadb.metrics import LOSS, MetricKey
    from gammadb.records import RunSpec
    from gammadb.records import RunStatus

    n_gamma = 10
    seeds = 2
    n_eta = max(1, runs // (n_gamma * seeds))
    gammas = np.logspace(-2, 2, n_gamma)
    sweep = store.ensure_sweep(SWEEP, {"benchmark": True})
    specs, params = [], []
    for g in gammas:
        es = 0.5 * g**2 / (1 + g) ** (4 / 3)
        for eta in es * np.logspace(-2.5, 1.0, n_eta):
            for seed in range(seeds):
                specs.append(RunSpec(model="mlp", dataset="synthetic", loss_fn="mse", optimizer="sgd", depth=3,
                                     width=64, batch_size=32, gamma=float(g), eta=float(eta), seed=seed,
                                     dtype="float32", steps_planned=steps, config={"bench": True}))
                params.append((es, eta, seed))
    records = store.ensure_runs(sweep.id, specs[:runs])
    loss_id = store.metric_ids([MetricKey(LOSS)])[MetricKey(LOSS)]
    t = np.arange(steps, dtype=float)
    t0 = time.perf_counter()
    with store.writer(batch_rows=400_000, background=False) as w:
        for rec, (es, eta, seed) in zip(records, params):
            rng = np.random.default_rng(rec.id)
            d = math.log10(eta / es)
            q = 0.01 * (1 + 4 * d * d)
            loss = (q + (1 - q) * np.exp(-t * 50 / steps * eta / es)) * (1 + 0.03 * rng.normal(size=steps))
            diverged_at = None
            if eta > 4 * es:
                diverged_at = steps // 3
                loss = loss[: diverged_at + 1]
                loss[-1] = math.inf
            w.write_rows(zip([rec.id] * loss.size, [loss_id] * loss.size, range(loss.size), loss.tolist()))
            status = RunStatus.DIVERGED if diverged_at is not None else RunStatus.COMPLETED
            store.finish_run(rec.id, status, steps_done=loss.size - 1, diverged_at=diverged_at, summarize=False)
    print(f"wrote {len(records)} runs in {time.perf_counter() - t0:.1f} s")
    store.rebuild_summaries(SWEEP)


def timed_pair(base, fn, repeat: int) -> tuple[float, float]:
    """Median seconds of ``base`` and ``fn``, measured alternately so that a busy machine slows
    both alike; one warm-up call each (imports, page cache)."""
    base()
    fn()
    tb, tf = [], []
    for _ in range(repeat):
        for f, out in ((base, tb), (fn, tf)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(tb), statistics.median(tf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="store URL (default: a new SQLite file in a temp dir)")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from typer.testing import CliRunner

    from gammadb.cli import app
    from gammadb.metrics import LOSS
    from gammadb.store import Store

    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory()
        url = f"sqlite:///{Path(tmp.name) / 'bench.sqlite'}"
    store = Store.open(url)
    if SWEEP not in store.sweeps_frame()["name"].to_list():
        build(store, args.runs, args.steps)
    n_rows = store.read("SELECT SUM(n) AS n FROM metric_chunks")["n"][0]
    print(f"store {store.display_url}: {n_rows:,} values, backend {store.backend}")
    loss_id = int(store.read("SELECT id FROM metrics WHERE name = ? AND layer = 0", [LOSS])["id"][0])
    mid = args.steps // 2

    run_ids = [int(r) for r in store.read(
        "SELECT r.id FROM runs r JOIN sweeps s ON s.id = r.sweep_id WHERE s.name = ?", [SWEEP])["id"].to_list()]

    def raw(max_step: int | None) -> None:
        from gammadb.store import chunks

        conn = store.raw_connection(read_only=True)
        try:
            got = chunks.read_series(store.backend, conn, run_ids, [loss_id], hi=max_step)
        finally:
            conn.close()
        starts = np.flatnonzero(np.diff(got["run_id"], prepend=-1))
        np.add.reduceat(got["value"], starts) / np.diff(np.append(starts, got["value"].size))

    runner = CliRunner()

    def cli(*extra: str) -> None:
        res = runner.invoke(app, ["analyze", "optimal-lr", "--url", url, "--sweep", SWEEP, "--json", *extra])
        if res.exit_code != 0:
            raise SystemExit(f"optimal-lr failed: {res.output}")

    cases = [
        ("default budget (run summaries)", (), None),
        (f"--budget {mid} (tail window in SQL)", ("--budget", str(mid)), mid),
        ("--criterion min (run summaries)", ("--criterion", "min"), None),
        (f"--budget {mid} --criterion min (GROUP BY)", ("--budget", str(mid), "--criterion", "min"), mid),
    ]
    worst = 0.0
    print(f"{'optimal-lr case':48s} {'raw read':>10s} {'optimal-lr':>11s}  ratio")
    for name, extra, max_step in cases:
        base, t = timed_pair(lambda: raw(max_step), lambda: cli(*extra), args.repeat)
        ratio = t / base
        worst = max(worst, ratio)
        rows = "all steps" if max_step is None else f"steps <= {max_step}"
        print(f"{name:48s} {base * 1000:8.1f}ms {t * 1000:9.1f}ms  {ratio:5.2f}   (baseline over {rows})")
    print(f"worst ratio: {worst:.2f} (against a raw read of the chunks; the target <= 2 was set against the SQL "
          "aggregate of the row-per-value layout, 3-6x slower than this read: compare the optimal-lr times themselves)")
    store.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
