"""Sweeps against the store: create the runs of a plan, claim them one at a time, train, record.

The same claim loop serves `gammadb run` (this process works through its own sweep) and
`gammadb worker` (any number of processes on any number of machines drain a sweep together):
claims are transactional (see :meth:`gammadb.store.Store.claim_next`), so no run is trained twice.

Idempotent and resumable: completed and diverged runs are results and are skipped; runs left
'running' by a dead local process, and failed runs, go back to pending when the sweep is run again;
a restarted run resumes from its last checkpoint (when a checkpoint directory is set) or from step 1,
and the store upserts the steps it rewrites.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Protocol

from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.metrics import MetricKey
from gammadb.records import RunRecord, RunSpec
from gammadb.schema import RunStatus
from gammadb.store import Store, worker_id
from gammadb.store.writer import MetricWriter
from gammadb.runners.config import RunConfig


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What to run: the sweep's name, its spec (stored verbatim with the sweep) and its runs.

    With ``adaptive``, the paper's learning-rate scan: for each (group, gamma), etas are tried from
    large to small; the first eta at which no seed diverges is the largest convergent one; the scan
    continues ``decades_below`` decades below it and stops (the remaining etas are never created).
    """

    name: str
    spec: Mapping[str, Any]
    configs: Sequence[RunConfig]
    adaptive: bool = False
    decades_below: float = 2.0


@dataclasses.dataclass
class SweepReport:
    sweep: str
    total: int = 0
    skipped: int = 0  # already finished before this invocation
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    not_needed: int = 0  # adaptive scan: grid points below the scan's range
    run_ids: list[int] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    store_seconds: float = 0.0  # time spent waiting on store calls (workers)


class Reporter(Protocol):
    def run_started(self, run: RunRecord, index: int, total: int) -> None: ...
    def step(self, run_id: int, step: int, total: int) -> None: ...
    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None: ...


class NullReporter:
    def __enter__(self) -> "NullReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_started(self, run: RunRecord, index: int, total: int) -> None:
        pass

    def step(self, run_id: int, step: int, total: int) -> None:
        pass

    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class WorkOptions:
    device: str = "auto"
    checkpoint_dir: Optional[Path] = None
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_seconds: Optional[float] = 300.0
    flush_seconds: float = 2.0
    batch_rows: int = 20_000
    ensemble: int = 1  # train up to this many compatible grid points as one stacked model


def run_spec(config: RunConfig) -> RunSpec:
    hp = config.hyper_params()
    return RunSpec(
        model=hp["model"], dataset=hp["dataset"], loss_fn=hp["loss_fn"], optimizer=hp["optimizer"],
        depth=hp["depth"], width=hp["width"], batch_size=hp["batch_size"], gamma=hp["gamma"],
        eta=hp["eta"], seed=hp["seed"], dtype=hp["dtype"], steps_planned=hp["steps"],
        config=config.to_dict(),
    )


def point_key(run: RunRecord) -> str:
    """The key of a stored run's grid point (equal to ``run_spec(config).point_key()`` of its config)."""
    return run_spec(RunConfig.from_dict(run.config)).point_key()


def prepare(store: Store, plan: SweepPlan) -> tuple[int, list[RunRecord]]:
    """Validate every config (nothing is written when one is bad), then create the sweep and runs."""
    if not plan.configs:
        raise InvalidSpecError(f"sweep {plan.name!r} has no runs: check the gamma/eta grids and seeds")
    for c in plan.configs:
        c.validate()
    sweep = store.ensure_sweep(plan.name, dict(plan.spec))
    store.requeue(plan.name, failed=True)  # runs left by a dead local process, and failed ones
    if plan.adaptive:
        return sweep.id, []
    return sweep.id, store.ensure_runs(sweep.id, [run_spec(c) for c in plan.configs])


def run_sweep(store: Store, plan: SweepPlan, options: WorkOptions = WorkOptions(),
              reporter: Reporter = NullReporter()) -> SweepReport:
    """Run (or resume) a sweep in this process. Ctrl-C / SIGTERM stop cleanly: the current run's steps
    so far are committed and it goes back to pending, to resume on the next invocation."""
    t0 = time.perf_counter()
    sweep_id, runs = prepare(store, plan)
    report = SweepReport(sweep=plan.name)
    with _terminate_as_interrupt(store):
        if plan.adaptive:
            _adaptive(store, sweep_id, plan, options, reporter, report)
        else:
            report.total = len(runs)
            report.run_ids = [r.id for r in runs]
            report.skipped = sum(r.status.finished for r in runs)
            done = report.skipped
            ids = [r.id for r in runs]
            if options.ensemble > 1:
                pending = [r for r in runs if not r.status.finished]
                for _, status in _drain_ensembles(store, sweep_id, pending, options, reporter, done, report.total):
                    done += 1
                    tally(report, status)
            while True:
                run = store.claim_next(sweep_id, run_ids=ids)
                if run is None:
                    break
                done += 1
                with _released_on_interrupt(store, [run.id]):
                    reporter.run_started(run, done, report.total)
                    tally(report, train_claimed(store, run, options, reporter))
    report.seconds = time.perf_counter() - t0
    return report


class TimedStore:
    """A store proxy that adds up the wall time spent inside store calls (claims, status updates,
    summaries and waiting for the writer's final flush): how long a worker waits on the database."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
            return _TimedWriter(out, self) if name == "writer" else out

        return timed


class _TimedWriter:
    def __init__(self, writer: MetricWriter, clock: TimedStore) -> None:
        self._writer, self._clock = writer, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def close(self) -> None:
        t0 = time.perf_counter()
        try:
            self._writer.close()
        finally:
            self._clock.seconds += time.perf_counter() - t0


def work(store: Store, sweep: str, options: WorkOptions = WorkOptions(),
         reporter: Reporter = NullReporter(), *, max_runs: Optional[int] = None,
         stale_after_s: float = 300.0, poll_seconds: float = 0.5) -> SweepReport:
    """`gammadb worker`: claim pending runs of ``sweep`` until none is left (or ``max_runs``).

    An adaptive sweep (its stored spec says so) is scanned by the workers together: before each claim
    a worker creates the next eta level of every ladder whose levels so far have ended
    (:func:`advance_adaptive`), and while other workers still train runs that may open new levels it
    waits for them (polling every ``poll_seconds``) instead of exiting.
    """
    t0 = time.perf_counter()
    store = TimedStore(store)  # type: ignore[assignment]
    rec = store.get_sweep(sweep)
    adaptive = bool(rec.spec.get("adaptive"))
    report = SweepReport(sweep=sweep)
    with _terminate_as_interrupt(store):
        while max_runs is None or report.total < max_runs:
            store.requeue(sweep, stale_after_s=stale_after_s)
            busy = advance_adaptive(store, sweep) if adaptive else 0
            if options.ensemble > 1 and max_runs is None:
                pending = store.runs(sweep=sweep, status=RunStatus.PENDING)
                for run, status in _drain_ensembles(store, rec.id, pending, options, reporter, report.total, 0):
                    busy += 1
                    report.total += 1
                    report.run_ids.append(run.id)
                    tally(report, status)
            run = store.claim_next(rec.id)
            if run is None:
                if busy:
                    continue  # something ended or was created: look again
                if adaptive and store.runs(sweep=sweep, status=RunStatus.RUNNING):
                    _stop_if_requested()
                    time.sleep(poll_seconds)  # another worker's runs may open the next levels
                    continue
                break
            report.total += 1
            report.run_ids.append(run.id)
            with _released_on_interrupt(store, [run.id]):
                reporter.run_started(run, report.total, 0)
                tally(report, train_claimed(store, run, options, reporter))
    report.seconds = time.perf_counter() - t0
    report.store_seconds = store.seconds  # type: ignore[attr-defined]
    return report


def train_claimed(store: Store, run: RunRecord, options: WorkOptions, reporter: Reporter) -> RunStatus:
    """Train one claimed run and record its end. Exceptions in training mark it failed (with the
    error text) and the sweep goes on; a store failure or an interrupt propagates."""
    from gammadb.runners.train import resolve_device, train

    _stop_if_requested()
    config = RunConfig.from_dict(run.config)
    device = str(resolve_device(options.device))
    store.mark_running(run.id, worker=worker_id(), device=device)
    policy = _checkpoint_policy(options, run)
    writer = store.writer(batch_rows=options.batch_rows, flush_seconds=options.flush_seconds)
    sink = _StoreSink(writer, run.id, config.steps, reporter)
    with _failures_recorded(store, [run], [sink], writer, reporter) as failed:
        outcome = train(config, sink, device=device, checkpoint=policy, should_stop=stop_requested)
    if failed:
        return RunStatus.FAILED
    status = _record_end(store, run, outcome, sink, reporter)
    _stop_if_requested()
    return status


def _record_end(store: Store, run: RunRecord, outcome: Any, sink: "_StoreSink", reporter: Reporter) -> RunStatus:
    """Record how a trained run ended (a gammadb.runners.train.RunOutcome); return its status."""
    if outcome.status == "stopped":  # interrupted on request: resumable, not a result
        store.reset_runs([run.id])
        return RunStatus.PENDING
    status = RunStatus.DIVERGED if outcome.status == "diverged" else RunStatus.COMPLETED
    # A restarted run may have left steps beyond where this one ended (e.g. it diverged earlier on a
    # non-deterministic GPU): drop them so the series is exactly this run's.
    store.delete_steps_after(run.id, outcome.steps_done)
    store.finish_run(run.id, status, steps_done=outcome.steps_done, diverged_at=outcome.diverged_at)
    reporter.run_finished(run, status, outcome.steps_done, sink.last_loss)
    return status


def _checkpoint_policy(options: WorkOptions, run: RunRecord) -> Any:
    """The run's checkpoint policy (a gammadb.runners.checkpoint.CheckpointPolicy; None without a checkpoint
    directory), its directory cleared of checkpoints newer than what the store holds."""
    if options.checkpoint_dir is None:
        return None
    from gammadb.runners.checkpoint import CheckpointPolicy

    policy = CheckpointPolicy(
        directory=Path(options.checkpoint_dir) / _safe(run.sweep) / str(run.id),
        every_steps=options.checkpoint_every_steps, every_seconds=options.checkpoint_every_seconds,
    )
    _drop_checkpoints_ahead_of_store(policy.directory, run.steps_done)
    return policy


def _drop_checkpoints_ahead_of_store(directory: Path, steps_committed: int) -> None:
    """A checkpoint can be newer than the last committed batch (the process died between saving it
    and the writer's next commit). Resuming from it would leave a gap in the series, so only
    checkpoints at or before the committed step count are kept; with none left the run restarts."""
    from gammadb.runners.checkpoint import checkpoint_files

    for path in checkpoint_files(directory):  # named step_{t:09d}.pt
        if int(path.stem.split("_")[1]) > steps_committed:
            path.unlink(missing_ok=True)


def _drain_ensembles(store: Store, sweep_id: int, pending: Sequence[RunRecord], options: WorkOptions,
                     reporter: Reporter, done: int, total: int) -> Iterator[tuple[RunRecord, RunStatus]]:
    """Claim and train compatible pending runs in stacks of up to ``options.ensemble``; runs that
    cannot be stacked are left pending for the one-at-a-time loop."""
    from gammadb.runners.ensemble import can_ensemble, ensemble_key

    groups: dict[tuple, list[int]] = {}
    for r in pending:
        config = RunConfig.from_dict(r.config)
        if can_ensemble(config):
            groups.setdefault(ensemble_key(config), []).append(r.id)
    for ids in groups.values():
        while True:
            claimed = store.claim_many(sweep_id, ids, limit=options.ensemble)
            if not claimed:
                break
            with _released_on_interrupt(store, [r.id for r in claimed]):
                for run in claimed:
                    done += 1
                    reporter.run_started(run, done, total)
                statuses = train_claimed_ensemble(store, claimed, options, reporter)
            yield from zip(claimed, statuses)


@contextmanager
def _failures_recorded(store: Store, runs: Sequence[RunRecord], sinks: Sequence["_StoreSink"],
                       writer: MetricWriter, reporter: Reporter) -> Iterator[list[bool]]:
    """Around training: the writer is always closed (every step logged so far is committed). An
    exception from training marks the runs failed with its text, and the yielded list becomes [True],
    so the sweep goes on; store errors and interrupts propagate (the callers release the runs)."""
    failed: list[bool] = []
    try:
        yield failed
    except (KeyboardInterrupt, SystemExit, GammadbError):
        _close_quietly(writer)
        raise
    except Exception as exc:  # a bug or a bad config in one run must not stop the sweep
        _close_quietly(writer)
        text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        for run, sink in zip(runs, sinks):
            store.finish_run(run.id, RunStatus.FAILED, steps_done=sink.last_step, error=text)
            reporter.run_finished(run, RunStatus.FAILED, sink.last_step, None)
        failed.append(True)
        return
    writer.close()


def _close_quietly(writer: MetricWriter) -> None:
    try:
        writer.close()
    except Exception:
        pass  # the exception being handled matters more


def train_claimed_ensemble(store: Store, runs: Sequence[RunRecord], options: WorkOptions,
                           reporter: Reporter) -> list[RunStatus]:
    """Train claimed runs as one stacked model; each member is recorded as its own run (and, with a
    checkpoint directory, checkpointed as its own run)."""
    from gammadb.runners.ensemble import train_ensemble
    from gammadb.runners.train import resolve_device

    _stop_if_requested()
    configs = [RunConfig.from_dict(r.config) for r in runs]
    device = str(resolve_device(options.device))
    for r in runs:
        store.mark_running(r.id, worker=worker_id(), device=device)
    writer = store.writer(batch_rows=options.batch_rows, flush_seconds=options.flush_seconds)
    sinks = _StoreSinks(_StoreSink(writer, r.id, c.steps, reporter) for r, c in zip(runs, configs))
    with _failures_recorded(store, runs, sinks, writer, reporter) as failed:
        outcomes = train_ensemble(configs, sinks, device=device, should_stop=stop_requested,
                                  checkpoints=[_checkpoint_policy(options, r) for r in runs])
    if failed:
        return [RunStatus.FAILED] * len(runs)
    statuses = [_record_end(store, r, outcome, sink, reporter) for r, sink, outcome in zip(runs, sinks, outcomes)]
    _stop_if_requested()
    return statuses


_LOSS = MetricKey("loss")


class _StoreSink:
    """Adapts the trainer's per-step calls to the batched writer (which only appends to a list)."""

    def __init__(self, writer: MetricWriter, run_id: int, total: int, reporter: Reporter) -> None:
        self.writer, self.run_id, self.total, self.reporter = writer, run_id, total, reporter
        self.last_step = 0
        self.last_loss: Optional[float] = None
        self._every = max(1, total // 200)

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        self.writer.log(self.run_id, step, values)
        self.logged(step, values.get(_LOSS, self.last_loss))

    def logged(self, step: int, loss: Optional[float]) -> None:
        """Note a step handed to the writer (by ``log`` or an ensemble's ``log_block``)."""
        self.last_step = step
        self.last_loss = loss
        if step % self._every == 0:
            self.reporter.step(self.run_id, step, self.total)


class _StoreSinks(list):
    """An ensemble's member sinks, plus the one-call-per-step path into the writer (``log_block``)."""

    def log_block(self, step: int, members: Sequence[int], keys: Sequence[MetricKey],
                  rows: Sequence[Sequence[float]]) -> None:
        sinks = [self[i] for i in members]
        sinks[0].writer.log_block(step, [sink.run_id for sink in sinks], keys, rows)
        loss = keys.index(_LOSS) if _LOSS in keys else None
        for sink, row in zip(sinks, rows):
            sink.logged(step, row[loss] if loss is not None else sink.last_loss)


@dataclasses.dataclass
class _Ladder:
    """One (group, gamma) of the adaptive scan: its eta levels, largest first, and how far it got."""

    levels: list[tuple[float, list[RunConfig]]]
    taken: int = 0  # levels handed out so far
    largest_convergent: Optional[float] = None

    def next_levels(self, count: int, decades_below: float) -> list[tuple[float, list[RunConfig]]]:
        """Hand out up to ``count`` further levels, stopping at the scan's lower end."""
        out = []
        while len(out) < count and self.taken < len(self.levels):
            eta, configs = self.levels[self.taken]
            if self.below_range(eta, decades_below):
                break
            out.append((eta, configs))
            self.taken += 1
        return out

    def below_range(self, eta: float, decades_below: float) -> bool:
        """Whether ``eta`` lies below the scan's range (known once a level converged)."""
        return self.largest_convergent is not None and eta < self.largest_convergent * 10 ** (-decades_below) * (1 - 1e-9)

    def record(self, eta: float, statuses: Sequence[RunStatus]) -> None:
        """Levels are recorded largest eta first: the first with no diverged seed is the largest convergent."""
        if self.largest_convergent is None and statuses and RunStatus.DIVERGED not in statuses:
            self.largest_convergent = eta

    def untaken(self) -> int:
        return sum(len(configs) for _, configs in self.levels[self.taken:])


def _ladders(configs: Sequence[RunConfig]) -> list[_Ladder]:
    by_key: dict[tuple, dict[float, list[RunConfig]]] = {}
    for c in configs:
        key = tuple(sorted((k, v) for k, v in c.to_dict().items() if k not in ("eta", "seed")))
        by_key.setdefault(key, {}).setdefault(float(c.eta), []).append(c)
    return [_Ladder(sorted(levels.items(), key=lambda item: -item[0])) for levels in by_key.values()]


_LEVEL_ENDED = (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED)


def advance_adaptive(store: Store, sweep: str) -> int:
    """The adaptive scan driven by the store, for workers: create the next eta level of every ladder
    of ``sweep`` (per its stored spec) whose created levels have all ended and that is still within
    range; return how many runs were created. Any number of workers may call it at once: runs are
    keyed by their point, so a level is created once. A failed run ends its level as a non-diverged
    one (as in the one-process scan)."""
    from gammadb.runners.spec import spec_from_dict

    rec = store.get_sweep(sweep)
    spec = spec_from_dict(rec.spec)
    if not spec.adaptive:
        return 0
    stored = {point_key(r): r.status for r in store.runs(sweep=sweep)}
    new: list[RunSpec] = []
    for ladder in _ladders(spec.expand(check_files=False)):
        for eta, configs in ladder.levels:
            if ladder.below_range(eta, spec.decades_below):
                break
            specs = [run_spec(c) for c in configs]
            statuses = [stored.get(s.point_key()) for s in specs]
            if any(status is None for status in statuses):
                new.extend(s for s, status in zip(specs, statuses) if status is None)
                break
            if any(status not in _LEVEL_ENDED for status in statuses):
                break  # in progress
            ladder.record(eta, [status for status in statuses if status is not None])
    if new:
        store.ensure_runs(rec.id, new)
    return len(new)


def _adaptive(store: Store, sweep_id: int, plan: SweepPlan, options: WorkOptions, reporter: Reporter,
              report: SweepReport) -> None:
    """The adaptive eta scan in rounds: each round takes the next eta level of every open ladder (more
    than one level each when ``options.ensemble`` leaves room, so a gamma's eta ladder can be one
    ensemble), trains the round (stacked where it can), then moves each ladder's lower end. A level
    trained in the same round as the ladder's first convergent one may lie below the scan's range:
    it is kept, as a result like any other."""
    ladders = _ladders(plan.configs)
    report.total = len(plan.configs)
    started = 0
    while True:
        open_ladders = [ladder for ladder in ladders if ladder.taken < len(ladder.levels)]
        width = sum(len(ladder.levels[ladder.taken][1]) for ladder in open_ladders)
        depth = max(1, options.ensemble // width) if options.ensemble > 1 and width else 1
        chosen = [(ladder, eta, configs) for ladder in open_ladders
                  for eta, configs in ladder.next_levels(depth, plan.decades_below)]
        if not chosen:
            break
        runs = store.ensure_runs(sweep_id, [run_spec(c) for _, _, configs in chosen for c in configs])
        report.run_ids.extend(r.id for r in runs)
        report.skipped += sum(r.status.finished for r in runs)
        results = {r.id: r.status for r in runs if r.status.finished}
        for run, status in _train_round(store, sweep_id, [r for r in runs if not r.status.finished],
                                        options, reporter, started, report.total):
            started += 1
            tally(report, status)
            results[run.id] = status
        at = iter(runs)
        for ladder, eta, configs in chosen:  # in each ladder's order, largest eta first
            level = [next(at) for _ in configs]
            ladder.record(eta, [results[r.id] for r in level if r.id in results])
    report.not_needed = sum(ladder.untaken() for ladder in ladders)


def _train_round(store: Store, sweep_id: int, runs: Sequence[RunRecord], options: WorkOptions,
                 reporter: Reporter, started: int, total: int) -> Iterator[tuple[RunRecord, RunStatus]]:
    """Claim and train ``runs`` (stacked in ensembles where allowed, the rest one at a time); runs
    another process holds are left to it."""
    trained: set[int] = set()
    if options.ensemble > 1:
        for run, status in _drain_ensembles(store, sweep_id, runs, options, reporter, started, total):
            trained.add(run.id)
            started += 1
            yield run, status
    for run in runs:
        if run.id in trained:
            continue
        claimed = store.claim_next(sweep_id, run_ids=[run.id])
        if claimed is None:  # another process has it
            continue
        started += 1
        with _released_on_interrupt(store, [claimed.id]):
            reporter.run_started(claimed, started, total)
            yield claimed, train_claimed(store, claimed, options, reporter)


@contextmanager
def _released_on_interrupt(store: Any, run_ids: list[int]) -> Iterator[None]:
    """Ctrl-C / SIGTERM anywhere between a claim and a run's end puts the claimed runs back to
    pending (runs that already ended stay as they are)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        store.reset_runs(run_ids)
        raise


def tally(report: SweepReport, status: RunStatus) -> None:
    """Count one finished run into the report."""
    if status == RunStatus.COMPLETED:
        report.completed += 1
    elif status == RunStatus.DIVERGED:
        report.diverged += 1
    elif status == RunStatus.FAILED:
        report.failed += 1


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


_STOP = threading.Event()  # set by the first SIGTERM


def stop_requested() -> bool:
    """Whether a SIGTERM asked this process to stop (polled by training before every step)."""
    return _STOP.is_set()


def _stop_if_requested() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt("stopped on SIGTERM")


@contextmanager
def _terminate_as_interrupt(store: Any = None) -> Iterator[None]:
    """SIGTERM (SLURM preemption, `kill`) stops gracefully: the run in training finishes its step,
    saves a checkpoint (with a checkpoint directory) and goes back to pending, then the process stops
    as on Ctrl-C: the current batch is committed and (with ``store``) every run it holds goes back to
    pending. A second SIGTERM stops at once, whichever statement it interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        _STOP.set()

    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
        _stop_if_requested()  # a signal after the last run still ends as an interrupt
    except (KeyboardInterrupt, SystemExit):
        if store is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a further signal must not cut the release
            store.release_worker()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()
