"""train(): one run of centered SGD in the (gamma, eta) plane, streaming its metrics to a sink.

Step numbering: steps are 1..T. Everything logged at step t describes the parameters theta_{t-1},
i.e. before the t-th update: LOSS is the loss on the t-th fresh batch (the one the t-th update then
uses), WEIGHT_CHANGE is 0 at step 1, and cadence metrics at step t are measured on theta_{t-1} too;
except at the last step T, whose cadence metrics describe theta_T, measured after the last update (the
authors' evaluation after training). With cadence 'log' the cadence metrics are the authors' times:
theta_t for t = 0, 1, 2, 5, 10, 20, 50, ... (at steps t + 1) and theta_T (at step T); when T - 1 is one
of those times, step T carries theta_T only. A run extended past its old last step (``steps`` raised)
keeps that step's theta_T values.

Per step (one host transfer of the stacked values per step, no other device sync):
  LOSS; WEIGHT_CHANGE layers 1..L (||W_l - W_l(0)||_F / ||W_l(0)||_F); FEATURE_ALIGNMENT (centered
  alignment of the last-hidden-layer feature kernel with Y = y y^T on the fixed probe batch; optional).
On the cadence (``RunConfig.cadence_steps``):
  TEST_LOSS (``make_test_loss``: by default summed over the outputs, averaged over the test set);
  TEST_ACCURACY (classification); NTK_ALIGNMENT and NTK_DISTANCE (||K - K(0)||_F / ||K(0)||_F)
  of the empirical NTK on the probe batch; SHARPNESS (top Hessian eigenvalue of the training loss on
  a fixed batch); DATA_PASSES (finite tasks: passes completed by the parameters measured).
Kernel metrics need a probe of at least 2 examples (the toy task has one) and are skipped otherwise.

A non-finite loss is logged, the run stops and the outcome is 'diverged' at that step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from gammadb.errors import InvalidSpecError
from gammadb.metrics import (
    DATA_PASSES,
    FEATURE_ALIGNMENT,
    LOSS,
    NTK_ALIGNMENT,
    NTK_DISTANCE,
    SHARPNESS,
    TEST_ACCURACY,
    TEST_LOSS,
    WEIGHT_CHANGE,
    MetricKey,
)
from gammadb.runners.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointClock,
    CheckpointPolicy,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gammadb.runners.config import RunConfig
from gammadb.runners.data import DataStream, Task, make_task, mix_seed
from gammadb.runners.measure import TargetKernel, empirical_ntk, evaluate, preserved_buffers, top_hessian_eigenvalue
from gammadb.runners.models import (
    Centered,
    LossFn,
    build_model,
    build_optimizer,
    has_batchnorm,
    make_loss,
    make_test_loss,
    torch_dtype,
    weight_layers,
)

logger = logging.getLogger(__name__)

Status = Literal["completed", "diverged", "stopped"]


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``steps_done``: steps logged (= updates done, for completed/stopped runs).

    'stopped' means ``should_stop`` interrupted it (resumable from its checkpoint, if any).
    """

    status: Status
    steps_done: int
    diverged_at: int | None = None


class Sink(Protocol):
    """Receives one call per step, in order; on resume, steps restart after the checkpoint's step."""

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None: ...


class ListSink:
    """An in-memory sink (tests, benchmarks): ``records`` is [(step, {MetricKey: value})]."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[MetricKey, float]]] = []

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        self.records.append((step, dict(values)))

    def series(self, name: str, layer: int = 0) -> list[tuple[int, float]]:
        key = MetricKey(name, layer)
        return [(step, values[key]) for step, values in self.records if key in values]

    def values(self, name: str, layer: int = 0) -> list[float]:
        return [v for _, v in self.series(name, layer)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch.device understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Measurements:
    """The fixed batches of a run and the metrics measured on them (everything except the loss)."""

    def __init__(self, config: RunConfig, task: Task, model: Centered, loss_fn: LossFn, device: torch.device, dtype: torch.dtype):
        self.config, self.model, self.loss_fn = config, model, loss_fn
        self.test_loss_fn = make_test_loss(config)
        self.bn = has_batchnorm(model)
        self.probe = task.probe().to(device, dtype)
        self.kernels = len(self.probe) >= 2  # a centered kernel of one example is zero
        self.target = TargetKernel(self.probe.y) if self.kernels else None
        self.test = task.test_set().to(device, dtype)
        self.sharp = task.sharpness_batch().to(device, dtype)
        self.weights = weight_layers(model)
        self.init_weights = weight_layers(model.init_net)
        self.init_norms = torch.stack(torch._foreach_norm(self.init_weights))
        self.ntk_init: Tensor | None = None

    @property
    def per_step_alignment(self) -> bool:
        return self.config.feature_alignment and self.kernels

    def weight_change(self) -> Tensor:
        """(L,) relative Frobenius distance of each weight layer from init (two fused kernels)."""
        diffs = torch._foreach_sub(self.weights, self.init_weights)
        return torch.stack(torch._foreach_norm(diffs)) / self.init_norms

    def feature_alignment(self) -> Tensor:
        assert self.target is not None
        with preserved_buffers(self.model, self.bn):
            return self.target.alignment_of_features(self.model.features(self.probe.x))

    def cadence(self, step: int, stream: DataStream) -> dict[MetricKey, float]:
        """Cadence metrics of the current parameters (host floats; this is where syncs are allowed)."""
        c, values = self.config, {}
        test_loss, accuracy = evaluate(self.model, self.test.x, self.test.y, self.test.labels, self.test_loss_fn)
        values[MetricKey(TEST_LOSS)] = test_loss
        if accuracy is not None:
            values[MetricKey(TEST_ACCURACY)] = accuracy
        if c.ntk and self.kernels:
            values.update(self._ntk())
        if c.sharpness:
            values[MetricKey(SHARPNESS)] = self._sharpness(step)
        passes = stream.data_passes()
        if passes is not None:
            values[MetricKey(DATA_PASSES)] = passes
        return values

    def _ntk(self) -> dict[MetricKey, float]:
        assert self.target is not None
        net, x = self.model.net, self.probe.x
        if self.ntk_init is None:
            theta0 = {k: v.detach() for k, v in self.model.init_net.named_parameters()}
            self.ntk_init = empirical_ntk(self.model.init_net, x, theta0)
        kernel = empirical_ntk(net, x)
        distance = torch.linalg.matrix_norm(kernel - self.ntk_init) / torch.linalg.matrix_norm(self.ntk_init)
        return {
            MetricKey(NTK_ALIGNMENT): float(self.target.alignment_of_kernel(kernel)),
            MetricKey(NTK_DISTANCE): float(distance),
        }

    def _sharpness(self, step: int) -> float:
        batch = self.sharp
        generator = torch.Generator().manual_seed(mix_seed(self.config.seed, step))
        with preserved_buffers(self.model, self.bn):
            return top_hessian_eigenvalue(
                lambda: self.loss_fn(self.model(batch.x), batch.y, batch.labels),
                self.model.trainable_parameters(),
                iters=self.config.sharpness_iters,
                generator=generator,
            )


def checkpoint_step(state: dict, config: RunConfig, path: object) -> int:
    """The step of the checkpoint ``state`` (read from ``path``), once it is known to belong to
    ``config`` (``steps`` may have been raised since) and to lie within its steps."""
    saved = RunConfig.from_json(state["config"])
    if saved.replace(steps=config.steps) != config:
        raise InvalidSpecError(
            f"checkpoint {path} belongs to a different run config: use another checkpoint directory"
        )
    step = int(state["step"])
    if step > config.steps:
        raise InvalidSpecError(f"checkpoint {path} is at step {step}, past steps={config.steps}: raise steps")
    return step


def _restore(state: dict, config: RunConfig, path: object, model: Centered, optimizer: torch.optim.Optimizer, stream: DataStream) -> int:
    step = checkpoint_step(state, config, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    stream.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    return step


def train(
    config: RunConfig,
    sink: Sink,
    *,
    device: str | torch.device = "auto",
    should_stop: Callable[[], bool] | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> RunOutcome:
    """Train ``config`` for ``config.steps`` SGD steps, calling ``sink.log(step, values)`` once per step.

    ``should_stop`` is polled before every step; when it returns True the run saves a checkpoint (if
    a policy is given) and returns 'stopped'. With ``checkpoint`` the run resumes from the latest
    checkpoint in its directory (same config; ``steps`` may be raised to extend a run), saves on the
    policy's schedule, and saves at the end. On CPU a resumed run logs bit-identical values.
    Raises InvalidSpecError / DataNotFoundError for a bad config, before any step.
    """
    config.validate()
    dev = resolve_device(device)
    dtype = torch_dtype(config)
    logger.info("training on %s: %s", dev, config.to_json())

    model = build_model(config, dev)
    optimizer = build_optimizer(config, model)
    loss_fn = make_loss(config)
    task = make_task(config)
    stream = DataStream(task, dev, dtype)
    start = 0
    if checkpoint is not None and checkpoint.resume:
        path = latest_checkpoint(checkpoint.directory)
        if path is not None:
            start = _restore(load_checkpoint(path), config, path, model, optimizer, stream)
            logger.info("resumed from %s at step %d", path, start)
    measure = _Measurements(config, task, model, loss_fn, dev, dtype)
    clock = CheckpointClock(checkpoint, start) if checkpoint is not None else None

    def save(step: int) -> None:
        if checkpoint is None or clock is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_json(),
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data": stream.state_dict(),
            "rng": rng_state(),
        }
        save_checkpoint(checkpoint.directory, state, keep=checkpoint.keep)
        clock.saved(step)

    layers = len(measure.weights)
    keys = [MetricKey(LOSS)] + [MetricKey(WEIGHT_CHANGE, layer) for layer in range(1, layers + 1)]
    alignment = measure.per_step_alignment
    if alignment:
        keys.append(MetricKey(FEATURE_ALIGNMENT))
    cadence = config.cadence_steps()
    model.train()

    for step in range(start + 1, config.steps + 1):
        if should_stop is not None and should_stop():
            save(step - 1)
            return RunOutcome("stopped", step - 1)
        final = step == config.steps and step in cadence  # measured after the last update instead
        extra = measure.cadence(step, stream) if step in cadence and not final else None
        # Per-step metrics first: the probe forward restores BatchNorm buffers in place, which must
        # not happen while the training graph holds them.
        with torch.no_grad():
            parts = [measure.weight_change()]
            if alignment:
                parts.append(measure.feature_alignment().reshape(1))
        batch = next(stream)
        loss = loss_fn(model(batch.x), batch.y, batch.labels)
        parts.insert(0, loss.detach().reshape(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values = torch.cat(parts).tolist()  # the one device -> host transfer of the step
        record = dict(zip(keys, values))
        if final and math.isfinite(values[0]):
            extra = measure.cadence(step, stream)  # theta_T
        if extra:
            record.update(extra)
        sink.log(step, record)
        if not math.isfinite(values[0]):
            logger.info("diverged at step %d (loss %s)", step, values[0])
            return RunOutcome("diverged", step, diverged_at=step)
        if clock is not None and clock.due(step):
            save(step)

    if clock is not None and clock.last_step != config.steps:
        save(config.steps)
    return RunOutcome("completed", config.steps)
