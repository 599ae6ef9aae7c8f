"""Ensemble training: K grid points that share architecture and data stream, trained as one stacked model.

The members of an ensemble may differ in ``gamma``, ``eta`` and ``seed`` only (``ensemble_key``); they
see the same batches (the stream depends on ``data_seed`` alone) and are trained as one model whose
parameters carry a leading member axis: weights of shape (K, fan_in, fan_out) multiplied with
``torch.baddbmm``. The parameterisation is ``gammadb.runners.models``'s, read from there (layer multipliers,
``learning_rate``, ``mse_prefactor``); each member's initial weights are drawn by ``build_net`` from its
own seed, exactly as a solo run draws them. The backward pass runs on the sum of the member losses,
whose gradient with respect to one member's parameters is that member's own gradient, so a member
follows the trajectory it would follow alone (to rounding: a test holds float64 runs to 1e-10).

Every member's values reach its own sink exactly as ``gammadb.runners.train.train`` would log them: LOSS,
WEIGHT_CHANGE per layer and FEATURE_ALIGNMENT per step; TEST_LOSS, TEST_ACCURACY and DATA_PASSES on the
cadence, computed on the stacked model; SHARPNESS on the cadence, on CUDA by one batched Lanczos on the
stacked model (``gammadb.runners.measure.top_hessian_eigenvalues``: one Hessian-vector product serves all
members, each member's start vector drawn as its solo run draws it), on the CPU member by member;
NTK_ALIGNMENT and NTK_DISTANCE member by member on a scratch solo model loaded with the member's
weights (the same code as ``train``).

Divergence: a member whose loss is NaN/inf is logged at that step and ends 'diverged' there. Its loss is
excluded from the summed backward and its update is masked on the device (no extra host sync), so its
parameters stay frozen and nothing non-finite reaches the other members (every other operation is per
member: batched matmuls and per-member reductions). It is then dropped from the stack, so it costs no
more compute. ``should_stop`` ends every running member 'stopped'.

Checkpoints: with a ``CheckpointPolicy`` per member, every running member is saved on the policy's
schedule, on stop and at the end, each as its own file in the solo format (``gammadb.runners.checkpoint``), so
a member resumes alone with ``train`` or in any later ensemble. An ensemble resumes when all its
members' latest checkpoints are at the same step (members stopped together are); otherwise it starts
from step 1 (the store upserts the steps it rewrites).

Two implementations of the stacked forward exist: ``impl='bmm'`` (hand-written batched matmuls, the
default: the faster one, see benchmarks/bench_ensemble.py) and ``impl='vmap'`` (``torch.func``:
``functional_call`` of the solo network under ``vmap``, parameters stacked as ``stack_module_state``
would stack them), kept so the comparison can be rerun.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

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
from gammadb.runners.data import Batch, DataStream, Task, make_task, mix_seed
from gammadb.runners.measure import TargetKernel, empirical_ntk, top_hessian_eigenvalue, top_hessian_eigenvalues
from gammadb.runners.models import (
    MLP,
    Centered,
    ToyNet,
    build_model,
    build_net,
    build_optimizer,
    learning_rate,
    make_loss,
    mse_prefactor,
    torch_dtype,
)
from gammadb.runners.train import RunOutcome, Sink, checkpoint_step, resolve_device

logger = logging.getLogger(__name__)

#: Models an ensemble can stack. Not the CNN: as one grouped convolution its conv front end ran at
#: 0.47 - 0.61x the speed of the same members in turn on the CPU (benchmarks/bench_grouped_conv.py).
ENSEMBLE_MODELS: tuple[str, ...] = ("mlp", "toy")
#: The only optimiser: plain SGD (no per-parameter state, so the update is one masked axpy).
ENSEMBLE_OPTIMIZERS: tuple[str, ...] = ("sgd",)
#: The config fields in which members of one ensemble may differ.
MEMBER_FIELDS: tuple[str, ...] = ("gamma", "eta", "seed")

Impl = Literal["bmm", "vmap"]


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


# ===== Stacked parameters =========================================================================


def _member_view(vector: Tensor, like: Tensor) -> Tensor:
    """A (K,) vector shaped to broadcast against a (K, ...) stacked tensor."""
    return vector.view(-1, *([1] * (like.dim() - 1)))


class _Stack:
    """K members' parameters, every tensor with a leading member axis.

    ``params``: the trainable tensors (leaves); ``weights`` / ``init_weights``: W_1..W_L of the trained
    and initial networks (for WEIGHT_CHANGE); ``solo_names[i]``: the solo network's parameter name of
    ``params[i]``, with ``transposed`` telling whether its trailing two axes are swapped.
    """

    params: list[Tensor]
    init_params: list[Tensor]
    weights: list[Tensor]
    init_weights: list[Tensor]
    solo_names: list[str]
    transposed: list[bool]

    def forward(self, x: Tensor, *, init: bool = False) -> Tensor:
        """f_NN of every member (``init``: of theta_0) on the shared batch x: (K, B, out)."""
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """Last-hidden-layer features of every trained member: (K, B, N)."""
        raise NotImplementedError

    def _fill(self, nets: Iterable[nn.Module], k: int, device: torch.device, dtype: torch.dtype) -> None:
        """Allocate the stacks for ``k`` members and copy each solo net (float32, CPU) into its slot."""
        self.params, self.init_params = [], []
        for m, net in enumerate(nets):
            named = dict(net.named_parameters())
            if m == 0:
                for name, t in zip(self.solo_names, self.transposed):
                    shape = named[name].shape
                    shape = (*shape[:-2], shape[-1], shape[-2]) if t else tuple(shape)
                    self.params.append(torch.empty((k, *shape), device=device, dtype=dtype))
            with torch.no_grad():
                for stacked, name, t in zip(self.params, self.solo_names, self.transposed):
                    value = named[name].detach()
                    stacked[m].copy_(value.transpose(-1, -2) if t else value)
        self.init_params = [p.clone() for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        self._bind()

    def _bind(self) -> None:
        """Derive the named views (weights, biases, ...) from ``params`` / ``init_params``."""
        raise NotImplementedError

    def select(self, index: Tensor) -> None:
        """Keep only the members at ``index`` (a 1-D index tensor into the member axis)."""
        self.params = [p.detach().index_select(0, index).requires_grad_(True) for p in self.params]
        self.init_params = [p.index_select(0, index) for p in self.init_params]
        self._bind()

    @torch.no_grad()
    def store_member(self, k: int, net: nn.Module, init_net: nn.Module) -> None:
        """Copy ``net``'s parameters into member ``k``'s slot and ``init_net``'s into its theta_0 (the
        inverse of ``load_member``)."""
        for source, stacks in ((net, self.params), (init_net, self.init_params)):
            named = dict(source.named_parameters())
            for stacked, name, t in zip(stacks, self.solo_names, self.transposed):
                value = named[name].detach()
                stacked[k].copy_(value.transpose(-1, -2) if t else value)

    @torch.no_grad()
    def load_member(self, k: int, net: nn.Module, init_net: nn.Module) -> None:
        """Copy member ``k``'s current parameters into ``net`` and its initial ones into ``init_net``
        (solo networks of the same config), e.g. to measure it with the solo code."""
        for target, stacks in ((net, self.params), (init_net, self.init_params)):
            named = dict(target.named_parameters())
            for stacked, name, t in zip(stacks, self.solo_names, self.transposed):
                value = stacked[k]
                named[name].copy_(value.transpose(-1, -2) if t else value)


def _names_of(net: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in ``net`` (so the stacks follow the solo net's own naming)."""
    return {id(p): name for name, p in net.named_parameters()}


class _BmmMLP(_Stack):
    """The MLP of ``gammadb.runners.models.MLP`` for K members: h = m * (b + h W) per layer with W (K, fan_in,
    fan_out), b (K, 1, fan_out), one ``baddbmm`` each (the solo layer is one ``addmm``)."""

    def __init__(self, nets: Iterable[MLP], k: int, template: MLP, device: torch.device, dtype: torch.dtype):
        layers = [*template.hidden, template.readout]
        self.multipliers = [layer.multiplier for layer in layers]
        names = _names_of(template)
        self.solo_names = [names[id(layer.weight)] for layer in layers] + [names[id(layer.bias)] for layer in layers]
        self.transposed = [True] * len(layers) + [False] * len(layers)
        self._fill(nets, k, device, dtype)

    def _bind(self) -> None:
        n = len(self.multipliers)
        self.weights, self.biases = self.params[:n], [b.unsqueeze(1) for b in self.params[n:]]
        self.init_weights, self.init_biases = self.init_params[:n], [b.unsqueeze(1) for b in self.init_params[n:]]

    def _run(self, x: Tensor, weights: list[Tensor], biases: list[Tensor], *, readout: bool) -> Tensor:
        h = x.flatten(1).unsqueeze(0).expand(weights[0].shape[0], -1, -1)
        last = len(weights) - 1
        for i, (w, b, m) in enumerate(zip(weights, biases, self.multipliers)):
            if i == last and not readout:
                return h
            h = torch.baddbmm(b, h, w, beta=m, alpha=m)
            if i < last:
                h = torch.relu(h)
        return h

    def forward(self, x: Tensor, *, init: bool = False) -> Tensor:
        if init:
            return self._run(x, self.init_weights, self.init_biases, readout=True)
        return self._run(x, self.weights, self.biases, readout=True)

    def features(self, x: Tensor) -> Tensor:
        return self._run(x, self.weights, self.biases, readout=False)


class _Toy(_Stack):
    """``gammadb.runners.models.ToyNet`` for K members: f_NN = x w_1 ... w_L, each w of shape (K, 1, 1)."""

    def __init__(self, nets: Iterable[ToyNet], k: int, template: ToyNet, device: torch.device, dtype: torch.dtype):
        names = _names_of(template)
        self.solo_names = [names[id(w)] for w in template.weight_layers()]  # its only parameters
        self.transposed = [False] * len(self.solo_names)
        self._fill(nets, k, device, dtype)

    def _bind(self) -> None:
        self.weights, self.init_weights = self.params, self.init_params

    @staticmethod
    def _product(x: Tensor, weights: list[Tensor]) -> Tensor:
        h = x.flatten(1).unsqueeze(0)  # (1, B, 1): broadcast against (K, 1, 1)
        for w in weights:
            h = h * w
        return h

    def forward(self, x: Tensor, *, init: bool = False) -> Tensor:
        return self._product(x, self.init_weights if init else self.weights)

    def features(self, x: Tensor) -> Tensor:
        return self._product(x, self.weights[:-1]).expand(len(self.weights[0]), -1, -1)


class _FeaturesOf(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)  # type: ignore[operator]


class _Vmap(_Stack):
    """Any solo network under ``torch.func``: ``functional_call`` of a parameter-less (meta) copy of
    the solo net, vmapped over parameters stacked in the solo layout (as ``stack_module_state``
    stacks them); the batch is shared (in_dims None)."""

    def __init__(self, nets: Iterable[nn.Module], k: int, template: nn.Module, device: torch.device, dtype: torch.dtype):
        self.solo_names = [name for name, _ in template.named_parameters()]
        self.transposed = [False] * len(self.solo_names)
        names = _names_of(template)
        self._weight_names = [names[id(w)] for w in template.weight_layers()]  # type: ignore[operator]
        base = template.to("meta")
        self._net = base
        self._features = _FeaturesOf(base)
        self._fill(nets, k, device, dtype)

    def _bind(self) -> None:
        index = {name: i for i, name in enumerate(self.solo_names)}
        self.weights = [self.params[index[n]] for n in self._weight_names]
        self.init_weights = [self.init_params[index[n]] for n in self._weight_names]

    def _call(self, module: nn.Module, prefix: str, params: list[Tensor], x: Tensor) -> Tensor:
        names = [prefix + n for n in self.solo_names]

        def one(*member: Tensor) -> Tensor:
            return functional_call(module, dict(zip(names, member)), (x,))

        return vmap(one)(*params)

    def forward(self, x: Tensor, *, init: bool = False) -> Tensor:
        return self._call(self._net, "", self.init_params if init else self.params, x)

    def features(self, x: Tensor) -> Tensor:
        return self._call(self._features, "net.", self.params, x)


_STACKS: dict[tuple[str, str], type[_Stack]] = {
    ("mlp", "bmm"): _BmmMLP,
    ("toy", "bmm"): _Toy,
    ("mlp", "vmap"): _Vmap,
    ("toy", "vmap"): _Vmap,
}


def _build_stack(configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype, impl: Impl) -> _Stack:
    if impl not in ("bmm", "vmap"):
        raise InvalidSpecError(f"unknown ensemble impl {impl!r}: use 'bmm' or 'vmap'")
    cls = _STACKS[(configs[0].model, impl)]
    nets = (build_net(c) for c in configs)  # one at a time: each member's own seed, float32, CPU
    return cls(nets, len(configs), build_net(configs[0].replace(seed=0)), device, dtype)  # type: ignore[arg-type]


# ===== Losses and measurements ====================================================================


def _member_losses(config: RunConfig, out: Tensor, y: Tensor, labels: Tensor | None) -> Tensor:
    """(K,) the loss of ``gammadb.runners.models.make_loss`` for each member's output out[k] (B, C)."""
    if config.loss_fn == "xent":
        assert labels is not None, "validated: xent needs a classification task"
        k, b, c = out.shape
        per_example = F.cross_entropy(out.reshape(k * b, c), labels.repeat(k), reduction="none")
        return per_example.view(k, b).mean(dim=1)
    losses = (out - y).square().mean(dim=(1, 2))
    prefactor = mse_prefactor(config)
    return losses * prefactor if prefactor != 1.0 else losses


class _Ensemble:
    """The stacked model (centered, per-member gamma) and what is measured on it."""

    def __init__(self, configs: Sequence[RunConfig], task: Task, device: torch.device, dtype: torch.dtype, impl: Impl,
                 batched_sharpness: bool | None = None):
        # One Lanczos for all members on CUDA (one kernel sequence instead of K); member by member on
        # the CPU, where it measured faster at width 256 (0.72-0.76x batched) though slower at width
        # 64 (1.36-1.44x batched; benchmarks/bench_ensemble_sharpness.py).
        self.batched_sharpness = device.type == "cuda" if batched_sharpness is None else batched_sharpness
        self.configs = list(configs)
        self.config = configs[0]
        self.members = list(range(len(configs)))  # stack position -> index into configs
        self.stack = _build_stack(configs, device, dtype, impl)
        self.gamma = torch.tensor([c.gamma for c in configs], device=device, dtype=dtype).view(-1, 1, 1)
        self.neg_lr = torch.tensor([-learning_rate(c) for c in configs], device=device, dtype=dtype)
        self.probe = task.probe().to(device, dtype)
        self.kernels = len(self.probe) >= 2  # a centered kernel of one example is zero
        self.target = TargetKernel(self.probe.y) if self.kernels else None
        self.test = task.test_set().to(device, dtype)
        self.sharp = task.sharpness_batch().to(device, dtype)
        self._norm_init()
        self.ntk_init: dict[int, Tensor] = {}
        # A solo model: members are loaded into it for the NTK and converted through it to and from
        # checkpoints; the sharpness layout follows its parameter order.
        self.scratch: Centered | None = None

    def _scratch(self) -> Centered:
        if self.scratch is None:
            self.scratch = build_model(self.config.replace(seed=0), self.gamma.device)
        return self.scratch

    def member_state(self, j: int, step: int, stream: DataStream) -> dict:
        """The member at stack position ``j`` as a solo checkpoint (``gammadb.runners.checkpoint``'s format)."""
        config = self.configs[self.members[j]]
        solo = self._scratch()
        self.stack.load_member(j, solo.net, solo.init_net)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_json(),
            "step": step,
            "model": {k: v.detach().clone() for k, v in solo.state_dict().items()},
            "optimizer": build_optimizer(config, solo).state_dict(),
            "data": stream.state_dict(),
            "rng": rng_state(),
        }

    def restore(self, states: Sequence[dict]) -> None:
        """Load every member (stack order, before any was dropped) from its solo checkpoint state."""
        solo = self._scratch()
        for j, state in enumerate(states):
            solo.load_state_dict(state["model"])
            self.stack.store_member(j, solo.net, solo.init_net)
        self._norm_init()
        self.ntk_init.clear()

    def _norm_init(self) -> None:
        self.init_norms = torch.stack([_norms(w) for w in self.stack.init_weights])  # (L, K)

    def output(self, x: Tensor) -> Tensor:
        """The centered outputs f = (f_NN(theta) - f_NN(theta_0)) / gamma of every member: (K, B, C)."""
        with torch.no_grad():
            reference = self.stack.forward(x, init=True)
        return (self.stack.forward(x) - reference) / self.gamma

    def losses(self, batch: Batch) -> Tensor:
        return _member_losses(self.config, self.output(batch.x), batch.y, batch.labels)

    @torch.no_grad()
    def sgd_step(self, update: Tensor) -> None:
        """theta_k -= lr_k grad_k for the members where ``update`` (K,) bool is True; the others keep
        their parameters even when their gradients are not finite."""
        for p in self.stack.params:
            grad = p.grad
            if grad is None:
                continue
            grad = torch.where(_member_view(update, grad), grad, 0)
            p.addcmul_(grad, _member_view(self.neg_lr, p))
            p.grad = None

    def select(self, keep: list[int]) -> None:
        """Keep the members at stack positions ``keep`` (drop the rest from every tensor)."""
        index = torch.tensor(keep, device=self.gamma.device)
        self.stack.select(index)
        self.gamma = self.gamma.index_select(0, index)
        self.neg_lr = self.neg_lr.index_select(0, index)
        self.init_norms = self.init_norms.index_select(1, index)
        self.members = [self.members[j] for j in keep]

    # ----- per-step metrics (no host sync) ----------------------------------------------------
    def weight_change(self) -> Tensor:
        """(K, L): ||W_l - W_l(0)||_F / ||W_l(0)||_F of each member and layer."""
        diffs = torch._foreach_sub(self.stack.weights, self.stack.init_weights)
        return (torch.stack([_norms(d) for d in diffs]) / self.init_norms).t()

    def feature_alignment(self) -> Tensor:
        """(K,): centered alignment of each member's probe feature kernel with the target kernel."""
        assert self.target is not None
        phi = self.stack.features(self.probe.x)
        phi = phi - phi.mean(dim=1, keepdim=True)
        k = torch.bmm(phi, phi.transpose(1, 2))
        return (k * self.target.centered).sum(dim=(1, 2)) / (torch.linalg.matrix_norm(k) * self.target.norm)

    # ----- cadence metrics (host floats) ------------------------------------------------------
    def cadence(self, step: int, stream: DataStream) -> list[dict[MetricKey, float]]:
        """Cadence metrics of theta_{step-1} for every member, in stack order."""
        c = self.config
        test_losses, accuracies = self._evaluate()
        sharpness = None
        if c.sharpness:
            sharpness = self._sharpness(step) if self.batched_sharpness else \
                [self._sharpness_of(j, step) for j in range(len(self.members))]
        records: list[dict[MetricKey, float]] = []
        passes = stream.data_passes()
        for j, i in enumerate(self.members):
            values = {MetricKey(TEST_LOSS): test_losses[j]}
            if accuracies is not None:
                values[MetricKey(TEST_ACCURACY)] = accuracies[j]
            if c.ntk and self.kernels:
                solo = self._scratch()
                self.stack.load_member(j, solo.net, solo.init_net)
                values.update(self._ntk(i, solo))
            if sharpness is not None:
                values[MetricKey(SHARPNESS)] = sharpness[j]
            if passes is not None:
                values[MetricKey(DATA_PASSES)] = passes
            records.append(values)
        return records

    @torch.no_grad()
    def _evaluate(self, chunk: int = 1000) -> tuple[list[float], list[float] | None]:
        """Per member, as ``gammadb.runners.measure.evaluate`` with the test criterion of
        ``gammadb.runners.models.make_test_loss``: (mean test loss, accuracy or None)."""
        x, y, labels = self.test
        scale = self.config.test_loss_scale
        n = x.shape[0]
        total = torch.zeros(len(self.members), dtype=torch.float64, device=x.device)
        hits = torch.zeros(len(self.members), dtype=torch.int64, device=x.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            out = self.output(x[start:stop])
            part = None if labels is None else labels[start:stop]
            losses = _member_losses(self.config, out, y[start:stop], part)
            if scale != 1.0:
                losses = losses * scale
            total += losses.to(torch.float64) * (stop - start)
            if part is not None:
                hits += (out.argmax(dim=2) == part).sum(dim=1)
        accuracy = None if labels is None else [h / n for h in hits.tolist()]
        return [t / n for t in total.tolist()], accuracy

    def _ntk(self, i: int, solo: Centered) -> dict[MetricKey, float]:
        """NTK metrics of member ``i``, loaded into ``solo``."""
        assert self.target is not None
        x = self.probe.x
        if i not in self.ntk_init:
            theta0 = {k: v.detach() for k, v in solo.init_net.named_parameters()}
            self.ntk_init[i] = empirical_ntk(solo.init_net, x, theta0)
        init = self.ntk_init[i]
        kernel = empirical_ntk(solo.net, x)
        distance = torch.linalg.matrix_norm(kernel - init) / torch.linalg.matrix_norm(init)
        return {
            MetricKey(NTK_ALIGNMENT): float(self.target.alignment_of_kernel(kernel)),
            MetricKey(NTK_DISTANCE): float(distance),
        }

    def _sharpness_of(self, j: int, step: int) -> float:
        """SHARPNESS of the member at stack position ``j`` alone, on the solo model (as ``train``)."""
        solo, batch, config = self._scratch(), self.sharp, self.configs[self.members[j]]
        self.stack.load_member(j, solo.net, solo.init_net)
        solo.gamma = float(config.gamma)
        loss_fn = make_loss(config)
        generator = torch.Generator().manual_seed(mix_seed(config.seed, step))
        return top_hessian_eigenvalue(lambda: loss_fn(solo(batch.x), batch.y, batch.labels),
                                      solo.trainable_parameters(), iters=config.sharpness_iters, generator=generator)

    def _sharpness(self, step: int) -> list[float]:
        """SHARPNESS of every member (stack order): one batched Lanczos on the stacked model. Each
        member's start vector is drawn exactly as its solo run draws it (same generator, same order,
        in the solo layout), so the values equal the solo ones to rounding."""
        batch = self.sharp
        solo = dict(self._scratch().net.named_parameters())
        start = [torch.empty_like(p) for p in self.stack.params]
        for j, i in enumerate(self.members):
            generator = torch.Generator().manual_seed(mix_seed(self.configs[i].seed, step))
            drawn = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype)
                     for name, p in solo.items() if p.requires_grad}
            for slot, name, t in zip(start, self.stack.solo_names, self.stack.transposed):
                slot[j].copy_(drawn[name].transpose(-1, -2) if t else drawn[name])
        return top_hessian_eigenvalues(lambda: self.losses(batch).sum(), self.stack.params, start,
                                       iters=self.config.sharpness_iters)


def _norms(stacked: Tensor) -> Tensor:
    """(K,) Frobenius norm of each member's slice."""
    return torch.linalg.vector_norm(stacked, dim=tuple(range(1, stacked.dim())))


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
    model = _Ensemble(configs, task, dev, dtype, impl, batched_sharpness)

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
        rows = torch.cat(parts, dim=1).tolist()  # the one device -> host transfer of the step
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


def _resume(model: _Ensemble, configs: Sequence[RunConfig], policies: Sequence[CheckpointPolicy | None],
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
