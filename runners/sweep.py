"""The claim loops: run a sweep in this process, or drain one as a worker; claim, train, record.

The same claim loop serves `gammadb run` (this process works through its own sweep) and
`gammadb worker` (any number of processes on any number of machines drain a sweep together):
claims are transactional (see :meth:`gammadb.store.Store.claim_next`), so no run is trained twice.

Idempotent and resumable: completed and diverged runs are results and are skipped; runs left
'running' by a dead local process, and failed runs, go back to pending when the sweep is run again;
a restarted run resumes from its last checkpoint (when a checkpoint directory is set) or from step 1,
and the store upserts the steps it rewrites.

The plan and its runs' creation live in :mod:`gammadb.runners.plan`, training a claimed run in
:mod:`gammadb.runners.claims`, the adaptive eta scan in :mod:`gammadb.runners.adaptive` and stopping
on SIGTERM / Ctrl-C in :mod:`gammadb.runners.signals`.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from gammadb.records import RunStatus
from gammadb.store import Store
from gammadb.store.writer import MetricWriter
from gammadb.runners.adaptive import advance_adaptive, run_adaptive
from gammadb.runners.claims import drain_ensembles, train_claimed
from gammadb.runners.plan import SweepPlan, SweepReport, WorkOptions, prepare, tally
from gammadb.runners.reporters import NullReporter, Reporter
from gammadb.runners.signals import released_on_interrupt, stop_if_requested, terminate_as_interrupt


def run_sweep(store: Store, plan: SweepPlan, options: WorkOptions = WorkOptions(),
              reporter: Reporter = NullReporter()) -> SweepReport:
    """Run (or resume) a sweep in this process. Ctrl-C / SIGTERM stop cleanly: the current run's steps
    so far are committed and it goes back to pending, to resume on the next invocation."""
    t0 = time.perf_counter()
    sweep_id, runs = prepare(store, plan)
    report = SweepReport(sweep=plan.name)
    with terminate_as_interrupt(store):
        if plan.adaptive:
            run_adaptive(store, sweep_id, plan, options, reporter, report)
        else:
            report.total = len(runs)
            report.run_ids = [r.id for r in runs]
            report.skipped = sum(r.status.finished for r in runs)
            done = report.skipped
            ids = [r.id for r in runs]
            if options.ensemble > 1:
                pending = [r for r in runs if not r.status.finished]
                for _, status in drain_ensembles(store, sweep_id, pending, options, reporter, done, report.total):
                    done += 1
                    tally(report, status)
            while True:
                run = store.claim_next(sweep_id, run_ids=ids)
                if run is None:
                    break
                done += 1
                with released_on_interrupt(store, [run.id]):
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
    with terminate_as_interrupt(store):
        while max_runs is None or report.total < max_runs:
            store.requeue(sweep, stale_after_s=stale_after_s)
            busy = advance_adaptive(store, sweep) if adaptive else 0
            if options.ensemble > 1 and max_runs is None:
                pending = store.runs(sweep=sweep, status=RunStatus.PENDING)
                for run, status in drain_ensembles(store, rec.id, pending, options, reporter, report.total, 0):
                    busy += 1
                    report.total += 1
                    report.run_ids.append(run.id)
                    tally(report, status)
            run = store.claim_next(rec.id)
            if run is None:
                if busy:
                    continue  # something ended or was created: look again
                if adaptive and store.runs(sweep=sweep, status=RunStatus.RUNNING):
                    stop_if_requested()
                    time.sleep(poll_seconds)  # another worker's runs may open the next levels
                    continue
                break
            report.total += 1
            report.run_ids.append(run.id)
            with released_on_interrupt(store, [run.id]):
                reporter.run_started(run, report.total, 0)
                tally(report, train_claimed(store, run, options, reporter))
    report.seconds = time.perf_counter() - t0
    report.store_seconds = store.seconds  # type: ignore[attr-defined]
    return report
