"""The empirical NTK: the layer-wise path for ScaledLinear networks against per-example gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gammadb.runners.config import RunConfig
from gammadb.runners.measure import _ntk_by_example_gradients, _ntk_by_layers, empirical_ntk
from gammadb.runners.models import MLP, ScaledLinear, build_model

# (input shape, depth, out_dim); 4x4 images go through MLP.features' flatten.
MLPS = {
    "depth2-out1": ((8,), 2, 1),
    "depth2-out10": ((1, 4, 4), 2, 10),
    "depth3-out1": ((1, 4, 4), 3, 1),
    "depth3-out10": ((8,), 3, 10),
}


def _mlp(name: str, width: int = 16) -> tuple[MLP, Tensor]:
    shape, depth, out_dim = MLPS[name]
    g = torch.Generator().manual_seed(0)
    input_dim = 1
    for s in shape:
        input_dim *= s
    net = MLP(input_dim, width, depth, out_dim, g).double()
    # Biases start at 0; nonzero ones make the bias term of the kernel visible.
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, ScaledLinear) and layer.bias is not None:
                layer.bias.normal_(0.0, 1.0, generator=g)
    return net, torch.randn(7, *shape, generator=g, dtype=torch.float64)


def _assert_close(fast: Tensor, slow: Tensor, rel: float = 1e-10) -> None:
    fast, slow = fast.detach(), slow.detach()  # with a subset of params, slow tracks the others
    assert fast.shape == slow.shape and fast.dtype == slow.dtype
    assert float((fast - slow).abs().max()) <= rel * float(slow.abs().max())


def _params(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("name", list(MLPS))
def test_layerwise_ntk_equals_per_example_gradients(name: str) -> None:
    net, x = _mlp(name)
    fast = _ntk_by_layers(net, x, _params(net))
    assert fast is not None, "an MLP of ScaledLinear layers takes the layer-wise path"
    _assert_close(fast, _ntk_by_example_gradients(net, x, _params(net)))
    assert torch.equal(empirical_ntk(net, x), fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_layerwise_ntk_of_the_frozen_init_net_and_of_given_params(dtype: torch.dtype) -> None:
    config = RunConfig(task="mnist5k", width=16, depth=3, dtype="float64" if dtype == torch.float64 else "float32")
    model = build_model(config)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=dtype)
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    # theta_0: the frozen copy's parameters do not require grad and must be passed explicitly.
    theta0 = {k: v.detach() for k, v in model.init_net.named_parameters()}
    at_init = empirical_ntk(model.init_net, x, theta0)
    assert at_init.dtype == dtype and _ntk_by_layers(model.init_net, x, theta0) is not None
    _assert_close(at_init, _ntk_by_example_gradients(model.init_net, x, theta0), rel)
    # Parameters that differ from the module's own are the ones evaluated.
    g = torch.Generator().manual_seed(2)
    moved = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in theta0.items()}
    at_moved = empirical_ntk(model.net, x, moved)
    _assert_close(at_moved, _ntk_by_example_gradients(model.net, x, moved), rel)
    own = empirical_ntk(model.net, x)
    _assert_close(own, at_init, rel)  # the net is still at init...
    assert float((at_moved - own).abs().max()) > 1e-3 * float(own.abs().max())  # ...the given params are not


class _BiaslessHidden(nn.Module):
    """A bias-less hidden layer under a readout with bias."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.hidden = ScaledLinear(5, 12, generator, bias=False)
        self.readout = ScaledLinear(12, 3, generator, readout=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(torch.tanh(self.hidden(x)))


class _TwoHeads(nn.Module):
    """Output 0 from one head, outputs 1..2 from another, and a layer whose output is discarded."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.hidden = ScaledLinear(5, 12, generator)
        self.first = ScaledLinear(12, 1, generator, readout=True)
        self.rest = ScaledLinear(12, 2, generator, readout=True)
        self.discarded = ScaledLinear(12, 4, generator)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.hidden(x))
        self.discarded(h)
        return torch.cat([self.first(h), self.rest(h)], dim=1)


def test_layerwise_ntk_of_layers_that_some_outputs_do_not_reach() -> None:
    g = torch.Generator().manual_seed(6)
    net = _TwoHeads(g).double()
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    fast = _ntk_by_layers(net, x, _params(net))
    assert fast is not None
    _assert_close(fast, _ntk_by_example_gradients(net, x, _params(net)))


def test_layerwise_ntk_with_a_biasless_layer_and_a_subset_of_parameters() -> None:
    g = torch.Generator().manual_seed(3)
    net = _BiaslessHidden(g).double()
    with torch.no_grad():
        net.readout.bias.normal_(0.0, 1.0, generator=g)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    for params in (_params(net), {"readout.bias": net.readout.bias.detach(), "hidden.weight": net.hidden.weight.detach()}):
        fast = _ntk_by_layers(net, x, params)
        assert fast is not None
        _assert_close(fast, _ntk_by_example_gradients(net, x, params))


class _CalledTwice(nn.Module):
    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.layer = ScaledLinear(4, 4, generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(torch.tanh(self.layer(x)))


class _OnTokens(nn.Module):
    """A ScaledLinear on (n, tokens, d): an example's weight gradient is a sum of outer products."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.layer = ScaledLinear(4, 3, generator)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.layer(x.reshape(x.shape[0], 2, 4))).mean(dim=1)


class _LinearBatchNorm(nn.Module):
    """ScaledLinear layers only, but a BatchNorm (no affine parameters) mixes the examples."""

    def __init__(self, generator: torch.Generator, dropout: bool = False):
        super().__init__()
        self.hidden = ScaledLinear(4, 6, generator)
        self.norm = nn.Dropout(0.5) if dropout else nn.BatchNorm1d(6, affine=False)
        self.readout = ScaledLinear(6, 2, generator, readout=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(torch.tanh(self.norm(self.hidden(x))))


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda g: build_model(RunConfig(model="cnn", task="mnist5k", depth=4, width=2)).net, (1, 28, 28)),
        (lambda g: build_model(RunConfig(model="resnet", task="mnist5k", depth=1, width=2)).net, (1, 28, 28)),
        (_LinearBatchNorm, (4,)),
        (_CalledTwice, (4,)),
        (_OnTokens, (8,)),
    ],
    ids=["cnn-conv", "resnet-batchnorm", "linear-batchnorm", "layer-called-twice", "layer-on-tokens"],
)
def test_other_networks_take_the_per_example_path_unchanged(build, shape) -> None:
    g = torch.Generator().manual_seed(4)
    net = build(g).double()
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    assert _ntk_by_layers(net, x, _params(net)) is None
    assert all(not layer._forward_hooks for layer in net.modules())
    assert torch.equal(empirical_ntk(net, x), _ntk_by_example_gradients(net, x, _params(net)))


def test_dropout_is_left_to_the_per_example_path() -> None:
    g = torch.Generator().manual_seed(5)
    net = _LinearBatchNorm(g, dropout=True).double()
    assert _ntk_by_layers(net, torch.randn(5, 4, generator=g, dtype=torch.float64), _params(net)) is None


def test_measuring_leaves_parameters_gradients_buffers_and_rng_untouched() -> None:
    net, x = _mlp("depth3-out10")
    net.register_buffer("counter", torch.arange(3.0, dtype=torch.float64))
    net(x).square().sum().backward()  # .grad populated, as between a backward and an optimiser step
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    grads = {k: v.grad.clone() for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    rng = torch.get_rng_state()
    assert _ntk_by_layers(net, x, _params(net)) is not None
    moved = {k: v + 1.0 for k, v in params.items()}
    for kernel in (empirical_ntk(net, x), empirical_ntk(net, x, moved)):
        assert torch.isfinite(kernel).all()
    with torch.no_grad():  # the caller's grad mode does not matter
        _assert_close(empirical_ntk(net, x, moved), _ntk_by_example_gradients(net, x, moved))
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]) and torch.equal(v.grad, grads[k]) and v.requires_grad
    assert all(torch.equal(v, buffers[k]) for k, v in net.named_buffers())
    assert all(not layer._forward_hooks for layer in net.modules())
    assert torch.equal(torch.get_rng_state(), rng)
