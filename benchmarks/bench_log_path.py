"""Can the store keep up with a large ensemble's per-step metrics? The logging path, measured alone.

    python benchmarks/bench_log_path.py [--members 256] [--steps 400] [--rounds 3]
    GAMMADB_BENCH_PG_URL=postgresql+psycopg://... python benchmarks/bench_log_path.py   # PostgreSQL too

No training: each step, K members' default per-step values (loss, weight change of 3 layers, feature
alignment: 5 values) are handed to the writer as ``train_ensemble`` hands them over, through

  per-member   one sink ``log(step, {key: value})`` per member (the path before ``log_block``)
  log_block    one ``MetricWriter.log_block`` call per step for all members (what sweeps use now)

into a fresh SQLite file (and PostgreSQL with ``GAMMADB_BENCH_PG_URL``). Printed per backend: the
producer's microseconds per member-step with each path (median over rounds; with no queue limit, so
this is the Python cost alone), the ratio, the store's commit rate in rows/s, and what that means at
K: the ensemble steps per second the store sustains, beyond which the bounded queue
(``max_backlog_rows``) makes training wait.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gammadb.metrics import FEATURE_ALIGNMENT, LOSS, WEIGHT_CHANGE, MetricKey  # noqa: E402
from gammadb.records import RunSpec  # noqa: E402
from gammadb.store import Store  # noqa: E402
from gammadb.runners.reporters import NullReporter  # noqa: E402
from gammadb.runners.sinks import StoreSink, StoreSinks  # noqa: E402

KEYS = [MetricKey(LOSS)] + [MetricKey(WEIGHT_CHANGE, layer) for layer in (1, 2, 3)] + [MetricKey(FEATURE_ALIGNMENT)]


def _runs(store: Store, name: str, k: int, steps: int) -> list[int]:
    sweep = store.ensure_sweep(name, {})
    specs = [RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=256,
                     batch_size=128, gamma=1.0, eta=0.1, seed=s, dtype="float32", steps_planned=steps,
                     config={"bench": name, "seed": s}) for s in range(k)]
    return [r.id for r in store.ensure_runs(sweep.id, specs)]


def one(store: Store, name: str, k: int, steps: int, block: bool) -> tuple[float, float, int]:
    """(producer seconds, seconds in the database, rows) for one path."""
    ids = _runs(store, name, k, steps)
    writer = store.writer(max_backlog_rows=10**12)  # unbounded here: time the producer alone
    sinks = StoreSinks(StoreSink(writer, run_id, steps, NullReporter()) for run_id in ids)
    members = list(range(k))
    rows = [[0.5 + j / k, 0.1, 0.2, 0.3, 0.9] for j in range(k)]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if block:
            sinks.log_block(step, members, KEYS, rows)
        else:
            for i, row in zip(members, rows):
                sinks[i].log(step, dict(zip(KEYS, row)))
    produced = time.perf_counter() - t0
    writer.close()
    return produced, writer.seconds_in_db, writer.rows_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    k, steps = args.members, args.steps
    backends = [("sqlite", None)]
    if os.environ.get("GAMMADB_BENCH_PG_URL"):
        backends.append(("postgresql", os.environ["GAMMADB_BENCH_PG_URL"]))
    print(f"K = {k} members x {steps} steps x {len(KEYS)} values per member-step, {args.rounds} rounds")
    for label, url in backends:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.open(url or f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
            try:
                us: dict[bool, list[float]] = {False: [], True: []}
                rates: list[float] = []
                for r in range(args.rounds):
                    for block in (False, True):
                        produced, in_db, rows = one(store, f"bench-{os.getpid()}-{r}-{block}", k, steps, block)
                        us[block].append(1e6 * produced / (k * steps))
                        rates.append(rows / in_db)
            finally:
                store.close()
        old, new, rate = statistics.median(us[False]), statistics.median(us[True]), statistics.median(rates)
        print(f"{label}: producer {old:.2f} us per member-step per-member, {new:.2f} us with log_block "
              f"({old / new:.1f}x); store commits {rate:,.0f} rows/s = {rate / len(KEYS):,.0f} member-steps/s "
              f"= {rate / len(KEYS) / k:,.0f} ensemble steps/s at K = {k}")


if __name__ == "__main__":
    main()
