"""What a run's end costs: ``Store.finish_run`` (status and summary in one transaction) with and
without bucketing the run's loss into the store's cache afterwards, alternating, a run at a time.

    python benchmarks/bench_run_end.py [--runs 64] [--steps 10000] [--pg-url URL]

Writes ``--runs`` runs of ``--steps`` loss values into a fresh SQLite store (and, with ``--pg-url``
or ``GAMMADB_BENCH_PG_URL``, into that PostgreSQL database), then ends every run once with the fill
and once without, twice each, and prints the median milliseconds a run and their ratio. Then an
ensemble's end: all the runs ended by one ``finish_runs`` (one read of their losses, one commit, one
bucketing pass) against one ``finish_run`` each, alternating, twice each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def spec(i: int, steps: int):  # type: ignore[no-untyped-def]
    from gammadb.records import RunSpec

    return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=16,
                   batch_size=8, gamma=1.0, eta=0.001 * (i + 1), seed=0, dtype="float32",
                   steps_planned=steps, config={"i": i})


def measure(url: str, runs: int, steps: int) -> None:
    from sqlalchemy import text

    from gammadb.metrics import LOSS, MetricKey
    from gammadb.records import RunStatus
    from gammadb.store import Store

    with Store.open(url) as store:
        sweep = store.ensure_sweep(f"bench-run-end-{time.time_ns()}", {})
        records = store.ensure_runs(sweep.id, [spec(i, steps) for i in range(runs)])
        loss_id = store.metric_ids([MetricKey(LOSS)])[MetricKey(LOSS)]
        values = np.exp(-np.arange(steps) / 1000.0).tolist()
        with store.writer(batch_rows=400_000, background=False) as w:
            for r in records:
                w.write_rows(zip([r.id] * steps, [loss_id] * steps, range(steps), values))

        def reset() -> None:
            with store.engine.begin() as conn:  # every run running again, none cached
                conn.execute(text("DELETE FROM series_buckets"))
            for r in records:
                store.mark_running(r.id, worker="bench", device="cpu")

        def end_all(cache: bool) -> float:
            reset()
            times = []
            for r in records:
                t0 = time.perf_counter()
                store.finish_run(r.id, RunStatus.COMPLETED, steps_done=steps - 1, cache=cache)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        got: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(2):
            for cache in (True, False):
                got[cache].append(end_all(cache))
        together: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(2):
            for at_once in (True, False):
                reset()
                t0 = time.perf_counter()
                if at_once:
                    store.finish_runs([(r.id, RunStatus.COMPLETED, steps - 1, None) for r in records])
                else:
                    for r in records:
                        store.finish_run(r.id, RunStatus.COMPLETED, steps_done=steps - 1)
                together[at_once].append(time.perf_counter() - t0)
        store.delete_sweep(sweep.name)
    with_fill, without = statistics.median(got[True]), statistics.median(got[False])
    print(f"{url.split(':')[0]}: finish_run {1000 * with_fill:.1f} ms a run with the loss bucketed, "
          f"{1000 * without:.1f} ms without ({with_fill / without:.2f}x, +{1000 * (with_fill - without):.1f} ms); "
          f"an ensemble's end, {runs} runs with their losses bucketed: one finish_runs "
          f"{statistics.median(together[True]):.2f} s, one finish_run each {statistics.median(together[False]):.2f} s "
          f"({statistics.median(together[False]) / statistics.median(together[True]):.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--pg-url", default=os.environ.get("GAMMADB_BENCH_PG_URL"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{tmp}/run_end.sqlite", args.runs, args.steps)
    if args.pg_url:
        measure(args.pg_url, args.runs, args.steps)


if __name__ == "__main__":
    main()
