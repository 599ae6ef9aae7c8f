"""Training claimed runs and recording how each ended: one at a time or stacked as an ensemble.

Both claim loops (:mod:`gammadb.runners.sweep` and the adaptive scan, :mod:`gammadb.runners.adaptive`)
hand their claims here. A run that raises is marked failed with the error text and the sweep goes
on; a store failure or an interrupt propagates, and the caller puts the claimed runs back to pending.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gammadb.errors import GammadbError
from gammadb.records import RunRecord, RunStatus
from gammadb.store import Store, retry_transient, worker_id
from gammadb.store.writer import MetricWriter
from gammadb.runners.config import RunConfig
from gammadb.runners.plan import WorkOptions
from gammadb.runners.reporters import Reporter
from gammadb.runners.signals import released_on_interrupt, stop_if_requested, stop_requested
from gammadb.runners.sinks import StoreSink, StoreSinks


def train_claimed(store: Store, run: RunRecord, options: WorkOptions, reporter: Reporter) -> RunStatus:
    """Train one claimed run and record its end. Exceptions in training mark it failed (with the
    error text) and the sweep goes on; a store failure or an interrupt propagates."""
    from gammadb.runners.train import resolve_device, train

    stop_if_requested()
    config = RunConfig.from_dict(run.config)
    device = str(resolve_device(options.device))
    store.mark_running(run.id, worker=worker_id(), device=device)
    policy = _checkpoint_policy(options, run)
    writer = store.writer(batch_rows=options.batch_rows, flush_seconds=options.flush_seconds)
    sink = StoreSink(writer, run.id, config.steps, reporter)
    with _failures_recorded(store, [run], [sink], writer, reporter) as failed:
        outcome = train(config, sink, device=device, checkpoint=policy, should_stop=stop_requested)
    if failed:
        return RunStatus.FAILED
    status = _record_end(store, run, outcome, sink, reporter)
    stop_if_requested()
    return status


def _record_end(store: Store, run: RunRecord, outcome: Any, sink: StoreSink, reporter: Reporter) -> RunStatus:
    """Record how a trained run ended (a gammadb.runners.train.RunOutcome); return its status."""
    (status,) = _record_ends(store, [run], [outcome], [sink], reporter)
    return status


def _record_ends(store: Store, runs: Sequence[RunRecord], outcomes: Sequence[Any], sinks: Sequence[StoreSink],
                 reporter: Reporter) -> list[RunStatus]:
    """Record how trained runs ended (gammadb.runners.train.RunOutcome each); return their statuses.
    An ensemble's members end together: a few transactions for all of them, not a few each."""
    statuses = [RunStatus.PENDING if o.status == "stopped"  # interrupted on request: resumable, not a result
                else RunStatus.DIVERGED if o.status == "diverged" else RunStatus.COMPLETED for o in outcomes]
    stopped = [r.id for r, st in zip(runs, statuses) if st == RunStatus.PENDING]
    ended = [(r.id, st, o.steps_done, o.diverged_at) for r, o, st in zip(runs, outcomes, statuses)
             if st != RunStatus.PENDING]
    if stopped:
        store.reset_runs(stopped)
    if ended:
        # A restarted run may have left steps beyond where this one ended (e.g. it diverged earlier on
        # a non-deterministic GPU): drop them so the series is exactly this run's.
        # Both are one transaction and safe to repeat: a connection killed under them (a restarted
        # server) must not leave a trained run 'running' until its heartbeat goes stale.
        retry_transient(store.delete_steps_after_each, {run_id: done for run_id, _, done, _ in ended})
        retry_transient(store.finish_runs, ended)
    for run, status, outcome, sink in zip(runs, statuses, outcomes, sinks):
        if status != RunStatus.PENDING:
            reporter.run_finished(run, status, outcome.steps_done, sink.last_loss)
    return statuses


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


def drain_ensembles(store: Store, sweep_id: int, pending: Sequence[RunRecord], options: WorkOptions,
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
            with released_on_interrupt(store, [r.id for r in claimed]):
                for run in claimed:
                    done += 1
                    reporter.run_started(run, done, total)
                statuses = train_claimed_ensemble(store, claimed, options, reporter)
            yield from zip(claimed, statuses)


@contextmanager
def _failures_recorded(store: Store, runs: Sequence[RunRecord], sinks: Sequence[StoreSink],
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
        retry_transient(store.finish_runs, [(run.id, RunStatus.FAILED, sink.last_step, None)
                                            for run, sink in zip(runs, sinks)], error=text)
        for run, sink in zip(runs, sinks):
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

    stop_if_requested()
    configs = [RunConfig.from_dict(r.config) for r in runs]
    device = str(resolve_device(options.device))
    for r in runs:
        store.mark_running(r.id, worker=worker_id(), device=device)
    writer = store.writer(batch_rows=options.batch_rows, flush_seconds=options.flush_seconds)
    sinks = StoreSinks(StoreSink(writer, r.id, c.steps, reporter) for r, c in zip(runs, configs))
    with _failures_recorded(store, runs, sinks, writer, reporter) as failed:
        outcomes = train_ensemble(configs, sinks, device=device, should_stop=stop_requested,
                                  checkpoints=[_checkpoint_policy(options, r) for r in runs])
    if failed:
        return [RunStatus.FAILED] * len(runs)
    statuses = _record_ends(store, runs, outcomes, sinks, reporter)
    stop_if_requested()
    return statuses


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
