"""Networks in the centered, gamma-divided muP / mean-field parameterisation of docs/theory.md.

Every scale factor of the parameterisation lives in the "Parameterisation" section below and nowhere
else: the forward multiplier of a weight layer (1/sqrt(fan_in) hidden, 1/fan_in readout), what a
convolution counts as its fan-in (``conv_fan_in``), the centered output and its divisor gamma
(``centered_output``), the learning rate (``learning_rate``) and the MSE prefactor (``mse_prefactor``);
the losses are ``make_loss`` / ``make_test_loss`` and the test loss's sum over outputs is
``RunConfig.test_loss_scale`` (torch-free, so analysis can read it too). Init, forward, optimiser and
evaluation read them from here, the stacked ensembles (``gammadb.runners.stacked`` and
``gammadb.runners.ensemble_model``) and the image networks (``gammadb.runners.convnets``) included.
docs/fidelity.md compares every choice with the authors' code (Pehlevan-Group/Richness_Sweep).

All weights start N(0, 1) and biases 0; init draws from a local generator seeded by the run's seed,
in float32 on the CPU (then cast/moved), so a seed gives the same weights on every device and dtype.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gammadb.runners.config import RESNET_BLOCKS, RunConfig

# ===== Parameterisation: the only place scale factors are defined =================================


def layer_multiplier(fan_in: int, *, readout: bool) -> float:
    """Forward multiplier of a weight layer with N(0, 1) entries.

    Hidden layers use 1/sqrt(fan_in) (pre-activations O(1) at init, any width); the readout uses
    1/fan_in, the muP / mean-field readout that makes feature learning width-independent.
    """
    return 1.0 / fan_in if readout else 1.0 / math.sqrt(fan_in)


def conv_fan_in(c_in: int, kernel: int, conv_scale: str) -> int:
    """The fan-in whose 1/sqrt a convolution's output is multiplied by.

    'channels': C_in, as the authors' ``StdConv2d`` (``conv(x) / sqrt(x.shape[-3])``); 'fan_in':
    C_in * k * k, the full fan-in, which keeps activations O(1) for any kernel size k. They differ by
    the constant k per k x k conv layer, which moves no scaling exponent.
    """
    return c_in if conv_scale == "channels" else c_in * kernel * kernel


def centered_output(out: Tensor, out0: Tensor, gamma: float | Tensor) -> Tensor:
    """The centered, gamma-divided output f = (f_NN(theta) - f_NN(theta_0)) / gamma.

    ``out`` and ``out0``: f_NN of the trained and of the initial weights on the same inputs. ``gamma``: a
    float (one model, ``Centered``) or a tensor that broadcasts against ``out`` (a stacked ensemble's
    (K, 1, 1), one gamma per member). The only place the output is divided by gamma.
    """
    return (out - out0) / gamma


def learning_rate(config: RunConfig) -> float:
    """The optimiser's learning rate for ``config``.

    SGD: ``width * eta`` (the muP scaling that pairs with the 1/width readout; no gamma factor). The toy
    model has width 1, so its rate is eta itself. sign-SGD and Adam take ``eta`` as given: their updates
    are already normalised per coordinate, and the paper does not define a width scaling for them
    (an assumption of gammadb, not of the paper).
    """
    if config.optimizer == "sgd":
        return config.width * config.eta
    return config.eta


def mse_prefactor(config: RunConfig) -> float:
    """Factor in front of mean((f - y)^2).

    1 for the networks (PyTorch's MSELoss, as the authors train). 1/2 for the toy model: with
    loss = (f - y)^2 / 2 the Hessian at its minimum has top eigenvalue exactly
    ``gammadb.runners.toy.lambda_star`` (docs/theory.md) and gradient descent at rate eta is stable iff
    eta < 2 / lambda_star, so the closed form and the trainer agree.
    """
    return 0.5 if config.model == "toy" else 1.0


# ===== Layers =====================================================================================


def _normal_(tensor: Tensor, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.normal_(0.0, 1.0, generator=generator)


class ScaledLinear(nn.Module):
    """y = multiplier * (x W^T + b), W ~ N(0, 1), b = 0; multiplier from ``layer_multiplier``."""

    def __init__(self, fan_in: int, fan_out: int, generator: torch.Generator, *, readout: bool = False, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None
        self.multiplier = layer_multiplier(fan_in, readout=readout)
        _normal_(self.weight, generator)

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel for multiplier * (b + x W^T) on a 2-D view. Always this kernel: F.linear on
        # a 3-D input picks different kernels for weights with and without requires_grad, which would
        # break f == 0 at init (the frozen copy's weights do not require grad).
        flat = x.reshape(-1, x.shape[-1])
        if self.bias is not None:
            out = torch.addmm(self.bias, flat, self.weight.t(), beta=self.multiplier, alpha=self.multiplier)
        else:
            out = torch.mm(flat, self.weight.t()) * self.multiplier
        return out.reshape(*x.shape[:-1], out.shape[-1])


class ScaledConv2d(nn.Module):
    """Conv2d with N(0, 1) weights, zero bias, output (bias included) times 1/sqrt(``conv_fan_in``):
    1/sqrt(C_in) with conv_scale 'channels' (the authors'), 1/sqrt(C_in k^2) with 'fan_in'."""

    def __init__(self, c_in: int, c_out: int, kernel: int, generator: torch.Generator, *, stride: int = 1,
                 padding: int = 0, bias: bool = True, conv_scale: str = "channels"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.stride, self.padding = stride, padding
        self.multiplier = layer_multiplier(conv_fan_in(c_in, kernel, conv_scale), readout=False)
        _normal_(self.weight, generator)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding) * self.multiplier


def _scaled_weights(module: nn.Module) -> list[Tensor]:
    # Module registration order is input to readout in every architecture below.
    return [m.weight for m in module.modules() if isinstance(m, (ScaledLinear, ScaledConv2d))]


# ===== Architectures ==============================================================================


class Net(nn.Module):
    """A raw network f_NN(x; theta); gamma is applied by ``Centered``."""

    def features(self, x: Tensor) -> Tensor:
        """The last hidden representation (the readout's input), (B, features)."""
        raise NotImplementedError

    def weight_layers(self) -> list[Tensor]:
        """W_1..W_L, input to readout: the weight matrices / conv kernels (no biases or norms)."""
        return _scaled_weights(self)


class MLP(Net):
    """L weight layers of width N, ReLU: h1 = (W1 x + b1)/sqrt(D), h_{l+1} = (W relu(h_l) + b)/sqrt(N),
    f_NN = (W_L relu(h_{L-1}) + b_L)/N."""

    def __init__(self, input_dim: int, width: int, depth: int, out_dim: int, generator: torch.Generator):
        super().__init__()
        dims = [input_dim] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(ScaledLinear(a, b, generator) for a, b in zip(dims[:-1], dims[1:]))
        self.readout = ScaledLinear(width, out_dim, generator, readout=True)

    def features(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))


class ToyNet(Net):
    """The deep linear scalar model of docs/theory.md: f_NN(x) = x * w_1 * ... * w_L, balanced init w_l = 1.

    Width 1, one input and output; its weights are (1, 1) matrices so that per-layer metrics treat
    it like any other network.
    """

    def __init__(self, depth: int):
        super().__init__()
        self._names = tuple(f"w{l}" for l in range(1, depth + 1))
        for name in self._names:
            self.register_parameter(name, nn.Parameter(torch.ones(1, 1)))

    def features(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for name in self._names[:-1]:
            h = h * getattr(self, name)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x) * getattr(self, self._names[-1])

    def weight_layers(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._names]


# ===== The centered, gamma-divided model ===========================================================


class Centered(nn.Module):
    """f(x) = (f_NN(x; theta) - f_NN(x; theta_0)) / gamma, with theta_0 a frozen copy of the init.

    f is exactly 0 at init (both terms are computed by identical kernels on identical weights).
    ``net`` holds the trained parameters; ``init_net`` holds theta_0 (requires_grad=False; saved in the
    state dict). Both copies run in the same train/eval mode, as in the authors' code.
    """

    def __init__(self, net: Net, gamma: float):
        super().__init__()
        self.net = net
        self.init_net = copy.deepcopy(net)
        for p in self.init_net.parameters():
            p.requires_grad_(False)
        self.gamma = float(gamma)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            reference = self.init_net(x)
        return centered_output(self.net(x), reference, self.gamma)

    def features(self, x: Tensor) -> Tensor:
        """Last-hidden-layer features of the trained network (the input of the readout)."""
        return self.net.features(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]


def weight_layers(model: nn.Module) -> list[Tensor]:
    """The weight matrices / kernels W_1..W_L of a (Centered) model, input to readout.

    For a Centered model these are the trained weights; ``weight_layers(model.init_net)`` gives theta_0's
    in the same order. Biases, norms and position embeddings are not weight layers.
    """
    inner = model.net if isinstance(model, Centered) else model
    if not isinstance(inner, Net):
        raise TypeError(f"weight_layers needs a gammadb.runners.models network, got {type(inner).__name__}")
    return inner.weight_layers()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_net(config: RunConfig) -> Net:
    """The raw network f_NN for ``config`` (float32, CPU), initialised from ``config.seed``."""
    from gammadb.runners.convnets import CNN, ResNet, ViT  # imports this module

    generator = torch.Generator().manual_seed(config.seed)
    out = config.resolved_out_dim
    image = config.image_shape
    if config.model == "mlp":
        return MLP(config.resolved_input_dim, config.width, config.depth, out, generator)
    if config.model == "toy":
        return ToyNet(config.depth)
    assert image is not None, "validated: image models need image tasks"
    if config.model == "cnn":
        return CNN(image, config.width, out, generator, config.conv_scale)
    if config.model == "resnet":
        authors = config.depth in RESNET_BLOCKS
        blocks = RESNET_BLOCKS[config.depth] if authors else (1,) * config.depth
        return ResNet(image, config.width, blocks, out, generator, config.conv_scale, pool4=authors)
    if config.model == "vit":
        return ViT(image, config.width, config.depth, out, generator)
    raise AssertionError(config.model)  # validate() rejects unknown models


def torch_dtype(config: RunConfig) -> torch.dtype:
    return torch.float64 if config.resolved_dtype == "float64" else torch.float32


def build_model(config: RunConfig, device: torch.device | str = "cpu") -> Centered:
    """The centered model for ``config`` on ``device`` in the run's dtype (same weights everywhere)."""
    return Centered(build_net(config), config.gamma).to(device=device, dtype=torch_dtype(config))


# ===== Optimisers and losses =======================================================================


class SignSGD(torch.optim.Optimizer):
    """theta <- theta - lr * sign(grad). No momentum."""

    def __init__(self, params: Iterable[Tensor], lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                torch._foreach_add_(params, torch._foreach_sign(grads), alpha=-group["lr"])


def build_optimizer(config: RunConfig, model: Centered) -> torch.optim.Optimizer:
    """Plain SGD (no momentum, decay or schedule) at ``learning_rate(config)``, or sign-SGD / Adam."""
    params = model.trainable_parameters()
    lr = learning_rate(config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0)
    if config.optimizer == "signsgd":
        return SignSGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def make_test_loss(config: RunConfig, *, stacked: bool = False) -> LossFn:
    """The test criterion: ``make_loss(config, stacked=stacked)`` times ``config.test_loss_scale`` (for
    MSE with test_reduction 'sum': summed over the outputs, averaged over the batch)."""
    loss_fn, scale = make_loss(config, stacked=stacked), config.test_loss_scale
    if scale == 1.0:
        return loss_fn

    def summed(output: Tensor, target: Tensor, labels: Tensor | None) -> Tensor:
        return loss_fn(output, target, labels) * scale

    return summed


def make_loss(config: RunConfig, *, stacked: bool = False) -> LossFn:
    """``loss(output, target, labels) -> scalar``.

    mse: ``mse_prefactor * mean over batch and outputs of (f - target)^2`` (targets one-hot for
    classification); xent: mean cross-entropy of f against the integer labels.

    ``stacked``: ``output`` has a leading member axis, (K, B, C) (a stacked ensemble; ``target`` (B, C)
    and ``labels`` (B,) are shared), and the loss is (K,): member k's loss of output[k], as above.
    """
    if config.loss_fn == "xent":
        def xent(output: Tensor, target: Tensor, labels: Tensor | None) -> Tensor:
            assert labels is not None, "validated: xent needs a classification task"
            return F.cross_entropy(output, labels)

        def stacked_xent(output: Tensor, target: Tensor, labels: Tensor | None) -> Tensor:
            assert labels is not None, "validated: xent needs a classification task"
            k, b, c = output.shape
            per_example = F.cross_entropy(output.reshape(k * b, c), labels.repeat(k), reduction="none")
            return per_example.view(k, b).mean(dim=1)

        return stacked_xent if stacked else xent
    prefactor = mse_prefactor(config)

    def mse(output: Tensor, target: Tensor, labels: Tensor | None) -> Tensor:
        loss = (output - target).square().mean(dim=(1, 2)) if stacked else F.mse_loss(output, target)
        return loss * prefactor if prefactor != 1.0 else loss

    return mse
