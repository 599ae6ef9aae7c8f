"""Stacked networks: K solo networks of one config as one, every parameter with a leading member axis.

A stack holds the trained parameters and theta_0 of K members and runs f_NN of all of them on a shared
batch. Each member's initial weights are drawn by ``gammadb.runners.models.build_net`` from its own
seed, exactly as a solo run draws them, and the layer multipliers are read from the solo layers
(``gammadb.runners.models.layer_multiplier``), so the stacked forward is the solo forward with a member
axis. The centering and gamma division are not here: ``gammadb.runners.ensemble_model`` applies
``gammadb.runners.models.centered_output`` to a stack's outputs.

Two implementations exist: ``impl='bmm'`` (hand-written batched matmuls, weights of shape
(K, fan_in, fan_out) multiplied with ``torch.baddbmm``; the default: the faster one, see
benchmarks/bench_ensemble.py) and ``impl='vmap'`` (``torch.func``: ``functional_call`` of the solo
network under ``vmap``, parameters stacked as ``stack_module_state`` would stack them), kept so the
comparison can be rerun.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gammadb.errors import InvalidSpecError
from gammadb.runners.config import RunConfig
from gammadb.runners.models import MLP, ToyNet, build_net

Impl = Literal["bmm", "vmap"]


def member_view(vector: Tensor, like: Tensor) -> Tensor:
    """A (K,) vector shaped to broadcast against a (K, ...) stacked tensor."""
    return vector.view(-1, *([1] * (like.dim() - 1)))


def member_norms(stacked: Tensor) -> Tensor:
    """(K,) Frobenius norm of each member's slice."""
    return torch.linalg.vector_norm(stacked, dim=tuple(range(1, stacked.dim())))


class Stack:
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


class _BmmMLP(Stack):
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


class _Toy(Stack):
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


class _Vmap(Stack):
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


_STACKS: dict[tuple[str, str], type[Stack]] = {
    ("mlp", "bmm"): _BmmMLP,
    ("toy", "bmm"): _Toy,
    ("mlp", "vmap"): _Vmap,
    ("toy", "vmap"): _Vmap,
}


def build_stack(configs: Sequence[RunConfig], device: torch.device, dtype: torch.dtype, impl: Impl) -> Stack:
    """The stack of ``configs`` (members of one ensemble, in order) on ``device`` in ``dtype``."""
    if impl not in ("bmm", "vmap"):
        raise InvalidSpecError(f"unknown ensemble impl {impl!r}: use 'bmm' or 'vmap'")
    cls = _STACKS[(configs[0].model, impl)]
    nets = (build_net(c) for c in configs)  # one at a time: each member's own seed, float32, CPU
    return cls(nets, len(configs), build_net(configs[0].replace(seed=0)), device, dtype)  # type: ignore[arg-type]
