"""The adaptive learning-rate scan: per (group, gamma), etas from large to small, stopping below range.

Each (group, gamma) is a ladder of eta levels, largest first, all seeds at each level, scanned by the
authors' rule (:mod:`gammadb.runners.eta_scan`): the first level at which no seed diverges holds the
largest convergent eta; the scan goes on ``decades_below`` decades below it and creates nothing
further down; a diverged seed at a level within that range restarts the search below it (the range is
re-anchored at the next convergent level); with cross-entropy at gamma < 1 it runs the whole grid.
Runs already trained are kept whatever a later level shows. One process runs the scan in rounds
(:func:`run_adaptive`, a round stacked into ensembles where it can); workers scan together through
the store (:func:`advance_adaptive`). All three paths record levels through the same
:class:`~gammadb.runners.eta_scan.ScanRange`, so they visit the same levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Optional

from gammadb.records import RunRecord, RunSpec, RunStatus
from gammadb.store import Store
from gammadb.runners.claims import drain_ensembles, train_claimed
from gammadb.runners.config import RunConfig
from gammadb.runners.eta_scan import ScanRange, whole_grid
from gammadb.runners.plan import SweepPlan, SweepReport, WorkOptions, point_key, run_spec, tally
from gammadb.runners.reporters import Reporter
from gammadb.runners.signals import released_on_interrupt


@dataclasses.dataclass
class _Ladder:
    """One (group, gamma) of the adaptive scan: its eta levels, largest first, and how far it got."""

    levels: list[tuple[float, list[RunConfig]]]
    scan: ScanRange
    taken: int = 0  # levels handed out so far

    @property
    def largest_convergent(self) -> Optional[float]:
        return self.scan.largest_convergent

    def next_levels(self, count: int) -> list[tuple[float, list[RunConfig]]]:
        """Hand out up to ``count`` further levels, stopping at the scan's lower end."""
        out = []
        while len(out) < count and self.taken < len(self.levels):
            eta, configs = self.levels[self.taken]
            if self.scan.below(eta):
                break
            out.append((eta, configs))
            self.taken += 1
        return out

    def record(self, eta: float, statuses: Sequence[RunStatus]) -> None:
        """Record a level's ended runs (levels largest eta first). A level with no ended run says
        nothing; one below the range (trained in the round that anchored it) is kept as a result but
        is not part of the scan, so the rounds visit what the one-level-at-a-time scan visits."""
        if statuses:
            self.scan.record(eta, RunStatus.DIVERGED in statuses)

    def untaken(self) -> int:
        return sum(len(configs) for _, configs in self.levels[self.taken:])


def _ladders(configs: Sequence[RunConfig], decades_below: float) -> list[_Ladder]:
    by_key: dict[tuple, dict[float, list[RunConfig]]] = {}
    for c in configs:
        key = tuple(sorted((k, v) for k, v in c.to_dict().items() if k not in ("eta", "seed")))
        by_key.setdefault(key, {}).setdefault(float(c.eta), []).append(c)
    out = []
    for levels in by_key.values():
        first = next(iter(levels.values()))[0]
        out.append(_Ladder(sorted(levels.items(), key=lambda item: -item[0]),
                           ScanRange(decades_below, whole_grid(first.loss_fn, float(first.gamma)))))
    return out


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
    for ladder in _ladders(spec.expand(check_files=False), spec.decades_below):
        for eta, configs in ladder.levels:
            if ladder.scan.below(eta):
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


def run_adaptive(store: Store, sweep_id: int, plan: SweepPlan, options: WorkOptions, reporter: Reporter,
                 report: SweepReport) -> None:
    """The adaptive eta scan in rounds: each round takes the next eta level of every open ladder (more
    than one level each when ``options.ensemble`` leaves room, so a gamma's eta ladder can be one
    ensemble), trains the round (stacked where it can), then moves each ladder's lower end. A level
    trained in the same round as the level that anchored the range may lie below it: it is kept, as a
    result like any other, and does not move the range."""
    ladders = _ladders(plan.configs, plan.decades_below)
    report.total = len(plan.configs)
    started = 0
    while True:
        open_ladders = [ladder for ladder in ladders if ladder.taken < len(ladder.levels)]
        width = sum(len(ladder.levels[ladder.taken][1]) for ladder in open_ladders)
        depth = max(1, options.ensemble // width) if options.ensemble > 1 and width else 1
        chosen = [(ladder, eta, configs) for ladder in open_ladders
                  for eta, configs in ladder.next_levels(depth)]
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
        for run, status in drain_ensembles(store, sweep_id, runs, options, reporter, started, total):
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
        with released_on_interrupt(store, [claimed.id]):
            reporter.run_started(claimed, started, total)
            yield claimed, train_claimed(store, claimed, options, reporter)

