"""A sweep's plan and an estimate of its wall time, without touching the store: `gammadb run --dry-run`.

The plan is what :func:`gammadb.runners.plan.plan_of` expands (every config validated) grouped into the
units the claim loops train: ensembles of up to K compatible configs
(:func:`gammadb.runners.ensemble.group_ensembles`), each trained as one stacked model, and solo runs.

The estimate comes from a calibration on the chosen device: for each distinct architecture (everything
but gamma, eta, seed, steps and cadence; at most ``MAX_CALIBRATIONS``) its largest unit is trained
three times with no store (an in-memory sink): ``n1`` steps without the cadence metrics, ``n1`` steps
with them at every step (the difference: the cost of one cadence measurement) and up to ``n2`` steps
without them, stopped after ``budget`` seconds (the slope between the two plain runs: the cost of a
step, averaged over enough steps to include the data stream's periodic work; the rest: setting a run
up). The first training in a process pays one-off costs (lazy imports, kernel set-up), timed by a
short warm-up and counted once. A unit of T steps is setup + T x step + (its cadence steps) x
cadence; the units are summed and shared among the workers that run at once. The calibration trains at
a tiny eta (the cost of a step does not depend on eta, and nothing diverges); real runs that diverge
stop early and an adaptive scan creates only part of the grid, so for those the estimate is an upper
bound. The store's writes (claims, metric rows, summaries) come on top.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Optional

from gammadb.runners.config import RunConfig, cadence_steps
from gammadb.runners.plan import SweepPlan

#: Architectures calibrated; any further ones are estimated from the slowest of these.
MAX_CALIBRATIONS = 8
#: Steps of the short timed trainings (with and without cadence metrics) and the most of the long one.
CALIBRATION_STEPS = (5, 200)
#: Seconds after which the long timed training stops (slow models: fewer steps).
CALIBRATION_BUDGET = 2.0
#: The learning rate the calibration trains at: small enough that nothing moves or diverges.
CALIBRATION_ETA = 1e-12
HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Timings of one architecture's unit on the device (seconds)."""

    what: str  # e.g. "mlp L=3 N=64 B=32 float32, 1 member"
    members: int
    step: float
    cadence: float  # one measurement of the cadence metrics (all members)
    setup: float  # building the model, data stream and fixed batches


@dataclasses.dataclass(frozen=True)
class DryRun:
    sweep: str
    runs: int
    shape: str  # "5 gammas x 15 etas x 1 seed"
    steps: tuple[int, ...]  # the distinct step budgets
    total_steps: int  # summed over runs
    units: int  # what is trained: ensembles and solo runs
    ensembles: int  # units of more than one member
    ensemble_size: int  # K
    adaptive: bool
    decades_below: float
    device: str
    parallel: int  # workers training at once
    calibrations: tuple[Calibration, ...]
    startup: float  # one-off cost of the first training in a process (seconds)
    seconds: float  # the estimate of the wall time

    def text(self) -> str:
        steps = ", ".join(f"{s:,}" for s in self.steps)
        lines = [
            f"dry run of sweep {self.sweep!r}: nothing is written (the store is not opened)",
            f"runs: {self.runs:,} ({self.shape}), {steps} steps each: {self.total_steps:,} steps in all",
        ]
        if self.ensemble_size <= 1:
            lines.append(f"ensembles: none (--ensemble 1): {self.units:,} runs trained one at a time")
        else:
            solo = self.units - self.ensembles
            lines.append(f"ensembles: {self.ensembles:,} of up to {self.ensemble_size} members"
                         + (f" and {solo:,} runs alone" if solo else "")
                         + f": {self.units:,} training units")
        if self.adaptive:
            lines.append(f"adaptive: yes: per gamma, eta from large to small, stopping {self.decades_below:g} "
                         f"decades below the first convergent eta; at most {self.runs:,} runs, all counted below "
                         "(an upper bound)")
        else:
            lines.append("adaptive: no (the full grid)")
        for c in self.calibrations:
            lines.append(f"calibration on {self.device} ({c.what}): {_ms(c.step)}/step, {_ms(c.cadence)} per cadence "
                         f"measurement, {_ms(c.setup)} setup per run")
        lines.append(f"start-up: {_ms(self.startup)} once per worker process")
        workers = f"{self.parallel} worker{'s' if self.parallel != 1 else ''}"
        total = _human(self.seconds) + (f" ({self.seconds:,.0f} s)" if self.seconds >= 120 else "")
        lines.append(f"estimate: {total} of training wall time with {workers}; diverged runs end early, and the "
                     "store's writes come on top")
        if self.seconds > HOUR:
            lines.append(f"warning: this sweep would take more than an hour ({_human(self.seconds)}): consider "
                         "--ensemble, --workers, --adaptive or fewer points")
        return "\n".join(lines)


def estimate(plan: SweepPlan, options: Any, *, calibration_steps: Sequence[int] = CALIBRATION_STEPS,
             budget: float = CALIBRATION_BUDGET) -> DryRun:
    """The plan of ``plan`` and its estimated wall time under ``options`` (a
    :class:`gammadb.runners.launch.LaunchOptions`: device, ensemble, workers, threads, launcher,
    array_parallelism). Trains a few steps per architecture on the device; writes nothing anywhere."""
    from gammadb.errors import InvalidSpecError
    from gammadb.runners.ensemble import ensemble_key, group_ensembles
    from gammadb.runners.launch import set_threads
    from gammadb.runners.train import resolve_device

    configs = list(plan.configs)
    if not configs:
        raise InvalidSpecError(f"sweep {plan.name!r} has no runs: check the gamma/eta grids and seeds")
    for c in configs:
        c.validate()
    n1, n2 = calibration_steps
    if not 1 <= n1 < n2:
        raise InvalidSpecError(f"calibration steps must satisfy 1 <= n1 < n2, got {n1}, {n2}")
    k = max(1, int(options.ensemble))
    units = group_ensembles(configs, k) if k > 1 else [[i] for i in range(len(configs))]
    set_threads(options.threads)
    device = resolve_device(options.device)

    def arch(i: int) -> tuple:
        return tuple((f, v) for f, v in ensemble_key(configs[i]) if f not in ("steps", "cadence"))

    largest: dict[tuple, list[int]] = {}
    for u in units:
        a = arch(u[0])
        if a not in largest or len(u) > len(largest[a]):
            largest[a] = u
    first_arch, first_unit = next(iter(largest.items()))
    warm = [dataclasses.replace(configs[i], eta=CALIBRATION_ETA) for i in first_unit]
    warm_seconds, _ = _timed(warm, device, 2, "every")  # the first training in a process
    timed: dict[tuple, Calibration] = {}
    for n, (a, u) in enumerate(largest.items()):
        if n >= MAX_CALIBRATIONS:
            break
        timed[a] = _calibrate([configs[i] for i in u], device, n1, min(n2, max(configs[i].steps for i in u)), budget)
    c0 = timed[first_arch]
    startup = max(0.0, warm_seconds - c0.setup - 2 * (c0.step + c0.cadence))
    slowest = max(timed.values(), key=lambda c: c.setup + 1000 * c.step)
    seconds = 0.0
    for u in units:
        cal = timed.get(arch(u[0]), slowest)
        c = configs[u[0]]
        seconds += cal.setup + c.steps * cal.step + len(cadence_steps(c.cadence, c.steps)) * cal.cadence
    parallel = max(1, int(options.workers))
    if getattr(options, "launcher", "none") == "slurm":
        parallel = min(parallel, int(getattr(options, "array_parallelism", parallel)))
    parallel = min(parallel, len(units))
    return DryRun(
        sweep=plan.name, runs=len(configs), shape=_shape(configs), steps=tuple(sorted({c.steps for c in configs})),
        total_steps=sum(c.steps for c in configs), units=len(units), ensembles=sum(len(u) > 1 for u in units),
        ensemble_size=k, adaptive=plan.adaptive, decades_below=plan.decades_below, device=str(device),
        parallel=parallel, calibrations=tuple(timed.values()), startup=startup, seconds=startup + seconds / parallel,
    )


def _calibrate(members: list[RunConfig], device: Any, n1: int, n2: int, budget: float) -> Calibration:
    """Time ``members`` (one unit): n1 steps without and with the cadence metrics at every step, and
    up to n2 steps without them, stopped after ``budget`` seconds (see the module docstring)."""
    calm = [dataclasses.replace(c, eta=CALIBRATION_ETA) for c in members]
    t1, k1 = _timed(calm, device, n1, "none")
    tc, kc = _timed(calm, device, n1, "every")
    t2, k2 = _timed(calm, device, max(n2, n1 + 1), "none", budget=budget)
    step = (t2 - t1) / (k2 - k1) if k2 > k1 else t2 / max(k2, 1)
    if step <= 0:  # timer noise on a busy machine: the long run's mean step (an overestimate)
        step = t2 / max(k2, 1)
    setup = max(0.0, t1 - k1 * step)
    cadence = max(0.0, (tc - t1) / max(kc, 1))
    c = members[0]
    what = f"{c.model} L={c.depth} N={c.width} B={c.batch_size} {c.resolved_dtype}, {len(members)} member" \
        + ("s" if len(members) != 1 else "")
    return Calibration(what, len(members), step, cadence, setup)


def _timed(members: list[RunConfig], device: Any, steps: int, cadence: str,
           budget: Optional[float] = None) -> tuple[float, int]:
    """Seconds to train ``members`` for ``steps`` steps (fewer when ``budget`` seconds run out) into
    in-memory sinks, and the steps done."""
    from gammadb.runners.train import ListSink, train

    configs = [dataclasses.replace(c, steps=steps, cadence=cadence) for c in members]
    t0 = time.perf_counter()
    stop = None if budget is None else (lambda: time.perf_counter() - t0 > budget)
    if len(configs) == 1:
        outcomes = [train(configs[0], ListSink(), device=device, should_stop=stop)]
    else:
        from gammadb.runners.ensemble import train_ensemble

        outcomes = train_ensemble(configs, [ListSink() for _ in configs], device=device, should_stop=stop)
    return time.perf_counter() - t0, max(o.steps_done for o in outcomes)


def _shape(configs: Sequence[RunConfig]) -> str:
    """'5 gammas x 15 etas x 1 seed' (x 3 depths ... for the other fields that vary)."""
    def n_of(field: str) -> int:
        return len({getattr(c, field) for c in configs})

    parts = [f"{n_of('gamma')} gamma{'s' if n_of('gamma') != 1 else ''}",
             f"{n_of('eta')} eta{'s' if n_of('eta') != 1 else ''}",
             f"{n_of('seed')} seed{'s' if n_of('seed') != 1 else ''}"]
    for f in dataclasses.fields(RunConfig):
        if f.name not in ("gamma", "eta", "seed") and n_of(f.name) > 1:
            parts.append(f"{n_of(f.name)} {f.name} values")
    return " x ".join(parts)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR:.1f} h" if seconds < 48 * HOUR else f"{seconds / 86400:.1f} days"

