"""One prepared GPU check (issues 3 and 7): everything it measures is printed; a failing part is reported
and the script goes on.

    python benchmarks/gpu_check.py            # on a CUDA machine, after `pip install -e .`; < 6 minutes
    python benchmarks/gpu_check.py --smoke    # tiny sizes, runs anywhere (CPU) in well under a minute

(a) issue 3: a small sweep of train() runs (MLP width 256, depth 3, batch 128, 500 steps, the default
    metrics: per-step loss, weight change, feature alignment; test loss, NTK and sharpness on the log
    cadence) on CUDA and on the CPU: steps/s of each (wall, setup included; and per step from the
    first logged step to the last) and the ratio. One run per device with cadence 'none' too.
(b) issue 7: train_ensemble with K = 1, 8, 64, 256 members at widths 256 and 1024 (per-step metrics,
    cadence 'none'), impl 'bmm' and 'vmap': member-steps per second and the ratio to K sequential solo
    runs, the sequential time estimated from one solo train() run's step time. Target: >= 20x at K = 64,
    width 256.
(c) the store's writer against training, K = 1, 8, 64, 256 at width 256: each ensemble logs every
    member's values into an SQLite file through gammadb's ``MetricWriter`` (a bare-sqlite3 shim of the
    store with the chunked layout, so the GPU machine needs no sqlalchemy/polars); per K the step rate
    with the writer against (b)'s rate without a store (1.00 = training never waits), the seconds
    training waited on the full queue, the writer's largest backlog and its commit rate.
(d) would a CNN ensemble pay? The CNN's conv front end for K = 8 and 32 members at widths 16 and 64 as
    one grouped convolution against K stacks in turn (benchmarks/bench_grouped_conv.py; on 2 CPU
    cores grouped was 0.47 - 0.61x, i.e. slower).
(e) ensemble sharpness: one batched Lanczos for K = 8 and 64 members at width 256 against K solo
    ones (benchmarks/bench_ensemble_sharpness.py; batched is the CUDA default, unmeasured on a GPU so
    far; on the CPU it was 1.36-1.44x at width 64 and 0.72-0.76x at width 256).

Every measurement is bounded by a deadline (``--budget`` seconds in all, default 300): a run that would
pass its part's deadline is stopped (``should_stop``) and reported on the steps it did; a part with no
time left is skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gammadb.metrics import MetricKey  # noqa: E402
from gammadb.runners.config import RunConfig  # noqa: E402
from gammadb.runners.ensemble import train_ensemble  # noqa: E402
from gammadb.runners.train import train  # noqa: E402

SUMMARY: list[str] = []


def say(line: str = "", *, summary: bool = False) -> None:
    print(line, flush=True)
    if summary:
        SUMMARY.append(line)


class TimingSink:
    """Counts steps and keeps the time of the first and last log call (values are dropped)."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.count = 0

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += 1

    def per_step(self) -> float:
        return (self.last - self.first) / (self.count - 1) if self.count > 1 else float("nan")


class NullSink:
    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        pass


class WriterSink:
    """What the sweep's store sink does per step: hand the values to the batched writer."""

    def __init__(self, writer: object, run_id: int) -> None:
        self.writer, self.run_id = writer, run_id

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        self.writer.log(self.run_id, step, values)  # type: ignore[attr-defined]


class WriterSinks(list):
    """An ensemble's sinks with the sweep's one-call-per-step path (``MetricWriter.log_block``)."""

    def log_block(self, step: int, members: list[int], keys: list[MetricKey], rows: list[list[float]]) -> None:
        self[0].writer.log_block(step, [self[i].run_id for i in members], keys, rows)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def stopper(self) -> Callable[[], bool]:
        return lambda: time.perf_counter() > self.end


def guarded(name: str, part: Callable[[], None]) -> None:
    try:
        part()
    except Exception:  # one failing part must not stop the others
        say(f"{name}: FAILED", summary=True)
        traceback.print_exc(limit=8)
        sys.stdout.flush()
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----- (a) train() on CUDA vs CPU -----------------------------------------------------------------


def part_a(device: str, smoke: bool, deadline: Deadline) -> None:
    say("== (a) issue 3: train() sweep, CUDA vs CPU")
    width, steps = (32, 20) if smoke else (256, 500)
    base = RunConfig(model="mlp", task="teacher", depth=3, width=width, batch_size=128, steps=steps)
    if smoke:
        base = base.replace(test_size=200, probe_size=16, sharpness_iters=3)
    grid = [base.replace(gamma=g, eta=e) for g in (0.5, 2.0) for e in (0.01, 0.05)]
    if smoke:
        grid = grid[:2]
    devices = [device, "cpu"] if device != "cpu" else ["cpu"]
    say(f"MLP width {width}, depth 3, batch 128, {steps} steps, default metrics (cadence log: test loss, NTK, "
        f"sharpness); {len(grid)} runs per device (gamma x eta from {{0.5, 2}} x {{0.01, 0.05}}); "
        f"CPU torch threads {torch.get_num_threads()}")
    train(base.replace(steps=20), NullSink(), device=device)  # warm-up (CUDA context, kernels)
    rates: dict[tuple[str, str], tuple[float, float]] = {}
    for variant, configs in (("default", grid), ("cadence none", [grid[0].replace(cadence="none")])):
        for dev in devices:
            if deadline.left() < 5:
                say(f"  {variant} on {dev}: skipped (budget)")
                continue
            wall = done = 0.0
            per_step = []
            for config in configs:
                sink = TimingSink()
                sync(dev)
                t0 = time.perf_counter()
                outcome = train(config, sink, device=dev, should_stop=deadline.stopper())
                sync(dev)
                wall += time.perf_counter() - t0
                done += outcome.steps_done
                per_step.append(sink.per_step())
            step = sum(per_step) / len(per_step)
            rates[(variant, dev)] = (done / wall, 1.0 / step)
            say(f"  {variant:<13} {dev:<6}: {done / wall:8.1f} steps/s wall (setup incl.), {1 / step:8.1f} steps/s "
                f"first-to-last step, {int(done)} steps in {wall:.1f} s")
    for variant in ("default", "cadence none"):
        if (variant, device) in rates and (variant, "cpu") in rates and device != "cpu":
            g, c = rates[(variant, device)], rates[(variant, "cpu")]
            say(f"(a) train() {variant}: {device} / cpu steps/s = {g[0] / c[0]:.2f}x wall, {g[1] / c[1]:.2f}x per step "
                f"({g[0]:.0f} vs {c[0]:.0f} steps/s wall)", summary=True)


# ----- (b) ensembles -------------------------------------------------------------------------------


def _ensemble_configs(width: int, k: int, steps: int) -> list[RunConfig]:
    base = RunConfig(model="mlp", task="teacher", depth=3, width=width, batch_size=128, steps=steps, cadence="none",
                     ntk=False, sharpness=False)
    gammas, etas = (0.5, 1.0, 2.0, 4.0), (0.003, 0.01)
    return [base.replace(gamma=gammas[i % 4], eta=etas[(i // 4) % 2], seed=i) for i in range(k)]


def _solo_step(config: RunConfig, device: str, deadline: Deadline) -> float:
    sink = TimingSink()
    train(config, sink, device=device, should_stop=deadline.stopper())
    return sink.per_step()


def _ensemble_step(configs: list[RunConfig], device: str, impl: str, deadline: Deadline,
                   sinks: list | None = None) -> tuple[float, float, int]:
    """(seconds per ensemble step first-to-last, wall seconds incl. setup, steps done by member 0)."""
    timing = TimingSink()
    rest = sinks[1:] if sinks is not None else [NullSink() for _ in configs[1:]]
    first = sinks[0] if sinks is not None else None

    class First:
        def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
            if first is not None:
                first.log(step, values)
            timing.log(step, values)

    sync(device)
    t0 = time.perf_counter()
    outcomes = train_ensemble(configs, [First(), *rest], device=device, impl=impl, should_stop=deadline.stopper())  # type: ignore[arg-type]
    sync(device)
    return timing.per_step(), time.perf_counter() - t0, outcomes[0].steps_done


def part_b(device: str, smoke: bool, deadline: Deadline) -> dict[tuple[int, int, str], float]:
    say("== (b) issue 7: ensembles vs sequential solo runs")
    widths = (16, 32) if smoke else (256, 1024)
    ks = (1, 2, 4) if smoke else (1, 8, 64, 256)
    steps = {w: (10 if smoke else (300 if w <= 256 else 150)) for w in widths}
    say(f"MLP depth 3, batch 128, per-step metrics (loss, weight change, feature alignment), cadence none; "
        f"K in {ks}, widths {widths}, steps {steps}; ratio = K * solo step time / ensemble step time")
    rates: dict[tuple[int, int, str], float] = {}
    _ensemble_step(_ensemble_configs(widths[0], 2, 5), device, "bmm", deadline)  # warm-up
    _ensemble_step(_ensemble_configs(widths[0], 2, 5), device, "vmap", deadline)
    solo_rates: dict[int, float] = {}
    for width in widths:
        solo = _solo_step(_ensemble_configs(width, 1, steps[width])[0], device, deadline)
        solo_rates[width] = 1 / solo
        say(f"  width {width:>4} solo train(): {1 / solo:8.1f} steps/s", summary=True)
        for k in ks:
            for impl in ("bmm", "vmap"):
                if deadline.left() < 8:
                    say(f"  width {width:>4} K {k:>3} {impl:<4}: skipped (budget)", summary=True)
                    continue
                try:
                    step, wall, done = _ensemble_step(_ensemble_configs(width, k, steps[width]), device, impl, deadline)
                except Exception as exc:  # e.g. out of memory at the largest K: report, go on
                    say(f"  width {width:>4} K {k:>3} {impl:<4}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", summary=True)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                rates[(width, k, impl)] = k / step
                say(f"  width {width:>4} K {k:>3} {impl:<4}: {k / step:10.1f} member-steps/s, ratio {k * solo / step:7.2f}x "
                    f"({done} steps, {wall:.1f} s wall incl. setup)", summary=True)
    target = (widths[0], ks[2])  # K = 64, width 256 (full sizes)
    measured = [rates[(*target, i)] for i in ("bmm", "vmap") if (*target, i) in rates]
    if measured and target[0] in solo_rates and not smoke:
        ratio = max(measured) / solo_rates[target[0]]
        say(f"(b) target >= 20x at K = {target[1]}, width {target[0]}: {'met' if ratio >= 20 else 'NOT met'} "
            f"({ratio:.1f}x)", summary=True)
    return rates


# ----- (c) the writer at the largest K -------------------------------------------------------------


class _BareSqliteStore:
    """Just what MetricWriter needs from a store, on a bare SQLite file with gammadb's metric_chunks
    layout: for GPU machines whose Python lacks sqlalchemy/alembic/polars (the writer itself needs
    only the sqlite3 driver, so this measures the very code path a sweep uses)."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        import sqlite3

        self.path = path
        self.display_url = f"sqlite:///{path}"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, steps_done INTEGER, heartbeat_at TEXT)")
        conn.execute("CREATE TABLE metric_chunks (run_id INTEGER NOT NULL, metric_id INTEGER NOT NULL, "
                     "first_step INTEGER NOT NULL, n INTEGER NOT NULL, vals BLOB NOT NULL, "
                     "PRIMARY KEY (run_id, metric_id, first_step)) WITHOUT ROWID")
        conn.commit()
        conn.close()
        self._ids: dict = {}

    def metric_ids(self, keys):  # type: ignore[no-untyped-def]
        for k in keys:
            self._ids.setdefault(MetricKey(*k), len(self._ids) + 1)
        return {MetricKey(*k): self._ids[MetricKey(*k)] for k in keys}

    def raw_connection(self, *, read_only: bool = False):  # type: ignore[no-untyped-def]
        import sqlite3

        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def add_runs(self, n: int) -> list[int]:
        import sqlite3

        conn = sqlite3.connect(self.path)
        conn.executemany("INSERT INTO runs (id, steps_done) VALUES (?, 0)", [(i,) for i in range(1, n + 1)])
        conn.commit()
        conn.close()
        return list(range(1, n + 1))

    def count(self) -> int:
        import sqlite3

        conn = sqlite3.connect(self.path)
        n = conn.execute("SELECT COALESCE(SUM(n), 0) FROM metric_chunks").fetchone()[0]
        conn.close()
        return int(n)


def part_c(device: str, smoke: bool, deadline: Deadline, rates: dict[tuple[int, int, str], float]) -> None:
    from gammadb.store.writer import MetricWriter

    say("== (c) the writer against training, K = 1 .. 256")
    width, steps = (16, 20) if smoke else (256, 300)
    for k in ((1, 4) if smoke else (1, 8, 64, 256)):
        if deadline.left() <= 0:
            say(f"K {k}: skipped, no time left")
            continue
        path = Path(f"/tmp/gpu_{k}.sqlite")
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        configs = _ensemble_configs(width, k, steps)
        store = _BareSqliteStore(path)
        run_ids = store.add_runs(k)
        writer = MetricWriter(store)
        sinks = WriterSinks(WriterSink(writer, r) for r in run_ids)
        step, _, done = _ensemble_step(configs, device, "bmm", Deadline(deadline.left() / 2), sinks)
        t0 = time.perf_counter()
        writer.close()
        drain = time.perf_counter() - t0
        stored = store.count()
        per_member = 1 + configs[0].depth + (1 if configs[0].feature_alignment else 0)  # values per member-step
        produced = k * done * per_member
        bare = rates.get((width, k, "bmm"), float("nan"))
        say(f"K {k}, width {width}, {done} steps: {k / step:.1f} member-steps/s with the writer, {bare:.1f} without "
            f"a store in (b): ratio {(k / step) / bare:.2f} (1.00: training never waits); "
            f"{k * per_member / step:,.0f} values/s produced; training waited {writer.seconds_waiting:.2f} s", summary=True)
        say(f"  writer: max backlog {writer.max_backlog} values ({writer.max_backlog / max(k * per_member, 1):.0f} steps), "
            f"written {writer.rows_written} (stored {stored}, expected {produced}), seconds in db "
            f"{writer.seconds_in_db:.2f}, commit rate {writer.rows_written / max(writer.seconds_in_db, 1e-9):,.0f} values/s, "
            f"final drain {drain:.2f} s")


def part_d(device: str, smoke: bool) -> None:
    import statistics

    from benchmarks.bench_grouped_conv import grouped, seconds, sequential

    say("== (d) CNN front end: grouped convolution of K members vs K in turn")
    dev = torch.device(device)
    for width, k in ((4, 2),) if smoke else ((16, 8), (16, 32), (64, 8), (64, 32)):
        x = torch.randn(128, 1, 28, 28, device=dev)
        w1 = torch.randn(k, width, 1, 3, 3, device=dev, requires_grad=True)
        w2 = torch.randn(k, 2 * width, width, 3, 3, device=dev, requires_grad=True)
        for fn in (sequential, grouped):
            seconds(fn, x, w1, w2, dev)
        ratio = statistics.median(seconds(sequential, x, w1, w2, dev) / seconds(grouped, x, w1, w2, dev)
                                  for _ in range(3))
        say(f"  width {width:>3} K {k:>3}: sequential / grouped {ratio:.2f}x", summary=True)


def part_e(device: str, smoke: bool) -> None:
    import statistics

    from benchmarks.bench_ensemble_sharpness import per_member
    from gammadb.runners.data import make_task
    from gammadb.runners.ensemble_model import EnsembleModel

    say("== (e) ensemble sharpness: batched Lanczos vs member by member")
    dev = torch.device(device)
    for width, k in ((16, 2),) if smoke else ((256, 8), (256, 64)):
        base = RunConfig(model="mlp", task="teacher", width=width, depth=3, batch_size=128, steps=10)
        configs = [base.replace(gamma=0.5 * (1 + m % 8), eta=0.05, seed=m // 8) for m in range(k)]
        model = EnsembleModel(configs, make_task(base), dev, torch.float32, "bmm")
        model._sharpness(1)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            slow = per_member(model, 1)
            sync(device)
            t1 = time.perf_counter()
            fast = model._sharpness(1)
            sync(device)
            times.append((t1 - t0) / (time.perf_counter() - t1))
        diff = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(slow, fast))
        say(f"  width {width:>4} K {k:>3}: member-by-member / batched {statistics.median(times):.2f}x "
            f"(max rel diff {diff:.1e})", summary=True)


# ----- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check of the script itself)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all parts together")
    args = parser.parse_args()
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    smoke = args.smoke or not cuda
    if not cuda and not args.smoke:
        say("no CUDA device: running the smoke sizes on the CPU")
    say(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores, "
        f"torch CPU threads {torch.get_num_threads()}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        say(f"CUDA {torch.version.cuda}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    budget = args.budget
    rates: dict[tuple[int, int, str], float] = {}
    guarded("(a)", lambda: part_a(device, smoke, Deadline(0.25 * budget)))

    def b() -> None:
        rates.update(part_b(device, smoke, Deadline(0.8 * budget - (time.perf_counter() - start))))

    guarded("(b)", b)
    guarded("(c)", lambda: part_c(device, smoke, Deadline(0.95 * budget - (time.perf_counter() - start)), rates))
    guarded("(d)", lambda: part_d(device, smoke))
    guarded("(e)", lambda: part_e(device, smoke))
    say()
    say(f"== summary ({time.perf_counter() - start:.0f} s)")
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
