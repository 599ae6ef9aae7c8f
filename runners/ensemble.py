"""Ensemble training: K grid points that share architecture and data stream, trained as one stacked model.

The members of an ensemble may differ in ``gamma``, ``eta`` and ``seed`` only (``ensemble_key``); they
see the same batches (the stream depends on ``data_seed`` alone) and are trained as one model whose
parameters carry a leading member axis (``gammadb.runners.stacked``), centered and divided by each
member's gamma (``gammadb.runners.ensemble_model``); each member follows the trajectory it would
follow alone. This module groups configs into ensembles and runs the training loop.

Every member's values reach its own sink exactly as ``gammadb.runners.train.train`` would log them: LOSS,
WEIGHT_CHANGE per layer and FEATURE_ALIGNMENT per step; TEST_LOSS, TEST_ACCURACY, DATA_PASSES, SHARPNESS,
NTK_ALIGNMENT and NTK_DISTANCE on the cadence (how each is measured: ``gammadb.runners.ensemble_measure``).

Divergence: a member whose loss is NaN/inf is logged at that step and ends 'diverged' there. Its loss is
excluded from the summed backward and its update is masked on the device (no extra host sync), so its
parameters stay frozen and nothing non-finite reaches the other members. It is then dropped from the
stack, so it costs no more compute. ``should_stop`` ends every running member 'stopped'.

Checkpoints: with a ``CheckpointPolicy`` per member, every running member is saved on the policy's
schedule, on stop and at the end, each as its own file in the solo format (``gammadb.runners.checkpoint``), so
a member resumes alone with ``train`` or in any later ensemble. An ensemble resumes when all its
members' latest checkpoints are at the same step (members stopped together are); otherwise it starts
from step 1 (the store upserts the steps it rewrites).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import torch

from gammadb.errors import InvalidSpecError
from gammadb.metrics import FEATURE_ALIGNMENT, LOSS, WEIGHT_CHANGE, MetricKey
from gammadb.runners.checkpoint import (
    CheckpointClock,
    CheckpointPolicy,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from gammadb.runners.config import RunConfig
from gammadb.runners.data import DataStream, make_task
from gammadb.runners.ensemble_model import EnsembleModel
from gammadb.runners.models import torch_dtype
from gammadb.runners.stacked import Impl
from gammadb.runners.train import RunOutcome, Sink, checkpoint_step, resolve_device

logger = logging.getLogger(__name__)

#: Models an ensemble can stack. Not the CNN: as one grouped convolution its conv front end ran at
#: 0.47 - 0.61x the speed of the same members in turn on the CPU (benchmarks/bench_grouped_conv.py).
ENSEMBLE_MODELS: tuple[str, ...] = ("mlp", "toy")
#: The only optimiser: plain SGD (no per-parameter state, so the update is one masked axpy).
ENSEMBLE_OPTIMIZERS: tuple[str, ...] = ("sgd",)
#: The config fields in which members of one ensemble may differ.
MEMBER_FIELDS: tuple[str, ...] = ("gamma", "eta", "seed")


def can_ensemble(config: RunConfig) -> bool:
    """Whether ``config`` can be trained as a member of an ensemble: model mlp or toy, optimiser sgd.

    Every metric ``train`` records is supported (NTK and sharpness member by member), so no other
    field rules a config out.
    """
    return config.model in ENSEMBLE_MODELS and config.optimizer in ENSEMBLE_OPTIMIZERS


def ensemble_key(config: RunConfig) -> tuple:
    """Configs with equal keys can be trained as one ensemble: everything but gamma, eta and seed.

    The dtype enters resolved (dtype='auto' trains float64 below gamma = 1e-2, so an 'auto' gamma grid
    that crosses it splits into two ensembles), and input/output sizes enter resolved too.
    """
    fields = {k: v for k, v in config.to_dict().items() if k not in MEMBER_FIELDS}
    fields["dtype"] = config.resolved_dtype
    fields["input_dim"] = config.resolved_input_dim
    fields["out_dim"] = config.resolved_out_dim
    return tuple(sorted(fields.items()))


def group_ensembles(configs: Iterable[RunConfig], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped into ensembles (equal ``ensemble_key``, at most ``max_size``
    each, input order kept); configs that ``can_ensemble`` refuses come back as groups of one."""
    groups: dict[tuple, list[list[int]]] = {}
    out: list[list[int]] = []
    for i, config in enumerate(configs):
        if not can_ensemble(config):
            out.append([i])
            continue
        chunks = groups.setdefault(ensemble_key(config), [])
        if not chunks or (max_size is not None and len(chunks[-1]) >= max_size):
            chunks.append([])
            out.append(chunks[-1])
        chunks[-1].append(i)
    return out


def _check(configs: Sequence[RunConfig], sinks: Sequence[Sink]) -> None:
    if not configs:
        raise InvalidSpecError("an ensemble needs at least one config")
    if len(sinks) != len(configs):
        raise InvalidSpecError(f"an ensemble needs one sink per config: got {len(configs)} configs and {len(sinks)} sinks")
    for config in configs:
        config.validate()
        if not can_ensemble(config):
            raise InvalidSpecError(
                f"model {config.model!r} with optimizer {config.optimizer!r} cannot be trained in an ensemble: "
                f"ensembles support models {', '.join(ENSEMBLE_MODELS)} with optimizer sgd; train it alone"
            )
    first = dict(ensemble_key(configs[0]))
    for i, config in enumerate(configs[1:], start=1):
        other = dict(ensemble_key(config))
        if other != first:
            diff = ", ".join(f"{k} ({first[k]!r} vs {other[k]!r})" for k in sorted(first) if first[k] != other[k])
            raise InvalidSpecError(
                f"config {i} differs from config 0 in {diff}: members of an ensemble may differ only in "
                f"{', '.join(MEMBER_FIELDS)}; group configs by gammadb.runners.ensemble.ensemble_key"
            )


# ===== The training loop ==========================================================================


def train_ensemble(
    configs: Sequence[RunConfig],
    sinks: Sequence[Sink],
    *,
    device: str | torch.device = "auto",
    should_stop: Callable[[], bool] | None = None,
    impl: Impl = "bmm",
    checkpoints: Sequence[CheckpointPolicy | None] | None = None,
    batched_sharpness: bool | None = None,
) -> list[RunOutcome]:
    """Train ``configs`` (equal ``ensemble_key``; each ``can_ensemble``) as one stacked model.

    ``sinks[k]`` receives member k's ``log(step, values)`` calls, the same calls (to rounding) that
    ``train(configs[k], sinks[k])`` would make; returns one RunOutcome per config, in order:
    'completed', 'diverged' at the member's first non-finite loss, or 'stopped' (``should_stop``,
    polled before every step, returned True). Raises InvalidSpecError (or DataNotFoundError) before any
    step when the configs are bad, cannot be ensembled or differ in more than gamma, eta and seed.
    ``impl`` picks the stacked forward ('bmm', the default and faster one, or 'vmap'). One device ->
    host transfer per step for the per-step values of all members, plus the cadence metrics.
    ``checkpoints[k]`` (optional) is member k's checkpoint policy (see the module docstring); the
    schedule is the first policy's. When ``sinks`` has a method ``log_block(step, members, keys,
    rows)``, steps without cadence metrics go there in one call (``rows[j]``: the values of ``keys``
    of member ``members[j]``) instead of one ``log`` per member: the store's fast path.
    ``batched_sharpness``: one Lanczos for all members (default: on CUDA) or one per member.
    """
    sinks_in, configs, sinks = sinks, list(configs), list(sinks)
    _check(configs, sinks)
    policies = list(checkpoints) if checkpoints is not None else [None] * len(configs)
    if len(policies) != len(configs):
        raise InvalidSpecError(f"{len(configs)} configs but {len(policies)} checkpoint policies")
    config = configs[0]
    dev = resolve_device(device)
    dtype = torch_dtype(config)
    logger.info(
        "training an ensemble of %d on %s: %s; members (gamma, eta, seed): %s",
        len(configs), dev, config.to_json(), [(c.gamma, c.eta, c.seed) for c in configs],
    )
    task = make_task(config)
    stream = DataStream(task, dev, dtype)
    model = EnsembleModel(configs, task, dev, dtype, impl, batched_sharpness)

    layers = len(model.stack.weights)
    keys = [MetricKey(LOSS)] + [MetricKey(WEIGHT_CHANGE, layer) for layer in range(1, layers + 1)]
    alignment = config.feature_alignment and model.kernels
    if alignment:
        keys.append(MetricKey(FEATURE_ALIGNMENT))
    cadence = config.cadence_steps()
    outcomes: list[RunOutcome | None] = [None] * len(configs)
    block = getattr(sinks_in, "log_block", None)  # one call per step for all members, when offered
    start = _resume(model, configs, policies, stream)
    schedule = next((p for p in policies if p is not None), None)
    clock = CheckpointClock(schedule, start) if schedule is not None else None

    def save(step: int) -> None:
        for j, i in enumerate(model.members):
            policy = policies[i]
            if policy is not None and outcomes[i] is None:  # diverged members are results: not saved
                save_checkpoint(policy.directory, model.member_state(j, step, stream), keep=policy.keep)
        if clock is not None:
            clock.saved(step)

    for step in range(start + 1, config.steps + 1):
        if should_stop is not None and should_stop():
            save(step - 1)
            for i in model.members:
                outcomes[i] = RunOutcome("stopped", step - 1)
            break
        final = step == config.steps and step in cadence  # measured after the last update (as ``train``)
        extra = model.cadence(step, stream) if step in cadence and not final else None
        with torch.no_grad():
            parts = [model.weight_change()]
            if alignment:
                parts.append(model.feature_alignment().unsqueeze(1))
        batch = next(stream)
        losses = model.losses(batch)
        detached = losses.detach()
        # Decided on the device: a member whose loss is not finite neither joins the backward nor moves.
        finite = torch.isfinite(detached)
        torch.where(finite, losses, 0).sum().backward()
        model.sgd_step(finite)
        parts.insert(0, detached.unsqueeze(1))
        # The one device -> host transfer of the step: a (members x metrics) float64 array, handed to
        # the writer as it is (log_block stores it without a Python loop over values).
        rows = torch.cat(parts, dim=1).cpu().to(torch.float64).numpy()
        if final:  # theta_T of the members whose last loss was finite (a diverged one logs none)
            extra = [e if math.isfinite(row[0]) else {} for e, row in zip(model.cadence(step, stream), rows)]
        if block is not None and not extra:
            block(step, model.members, keys, rows)
        else:
            for j, (i, row) in enumerate(zip(model.members, rows)):
                record = dict(zip(keys, row))
                if extra:
                    record.update(extra[j])
                sinks[i].log(step, record)
        diverged = False
        for i, row in zip(model.members, rows):
            if not math.isfinite(row[0]):
                logger.info("member %d diverged at step %d (loss %s)", i, step, row[0])
                outcomes[i] = RunOutcome("diverged", step, diverged_at=step)
                diverged = True
        if diverged:
            keep = [j for j, i in enumerate(model.members) if outcomes[i] is None]
            if not keep:
                break
            model.select(keep)
        if clock is not None and clock.due(step):
            save(step)

    stopped = any(o is not None and o.status == "stopped" for o in outcomes)  # saved when it stopped
    if clock is not None and clock.last_step != config.steps and not stopped:
        save(config.steps)
    return [o if o is not None else RunOutcome("completed", config.steps) for o in outcomes]


def _resume(model: EnsembleModel, configs: Sequence[RunConfig], policies: Sequence[CheckpointPolicy | None],
            stream: DataStream) -> int:
    """Load every member from its latest checkpoint when all have one at the same step; return that
    step (0: start from scratch). A checkpoint of another config raises InvalidSpecError."""
    if not policies or any(p is None or not p.resume for p in policies):
        return 0
    paths = [latest_checkpoint(p.directory) for p in policies if p is not None]
    if any(path is None for path in paths):
        if any(path is not None for path in paths):
            logger.info("some members have no checkpoint: the ensemble starts from step 1")
        return 0
    states = [load_checkpoint(path) for path in paths if path is not None]
    steps = {checkpoint_step(state, c, path) for state, c, path in zip(states, configs, paths)}
    if len(steps) != 1 or len({repr(state["data"]) for state in states}) != 1:
        logger.warning("members' latest checkpoints are at steps %s: the ensemble starts from step 1", sorted(steps))
        return 0
    model.restore(states)
    stream.load_state_dict(states[0]["data"])
    set_rng_state(states[0]["rng"])
    step = steps.pop()
    logger.info("ensemble of %d resumed from its checkpoints at step %d", len(states), step)
    return step


__all__ = [
    "ENSEMBLE_MODELS",
    "MEMBER_FIELDS",
    "can_ensemble",
    "ensemble_key",
    "group_ensembles",
    "train_ensemble",
]
