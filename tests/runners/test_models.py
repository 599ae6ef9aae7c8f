"""Models: the centered parameterisation's invariants, scale factors, kernels and sharpness."""

from __future__ import annotations

import math

import pytest
import torch

from gammadb.runners.config import RunConfig
from gammadb.runners.measure import TargetKernel, center_kernel, centered_alignment, empirical_ntk, top_hessian_eigenvalue
from gammadb.runners.models import (
    build_model,
    build_optimizer,
    centered_output,
    learning_rate,
    make_loss,
    make_test_loss,
    weight_layers,
)

MODELS = {
    "mlp": RunConfig(width=16),
    "mlp-float64": RunConfig(width=16, gamma=1e-4),
    "cnn": RunConfig(model="cnn", task="mnist5k", depth=4, width=4),
    "resnet": RunConfig(model="resnet", task="mnist5k", depth=2, width=4),
    "vit": RunConfig(model="vit", task="mnist5k", depth=1, width=8),
    "toy": RunConfig(model="toy", task="toy", width=1, batch_size=1, depth=3, gamma=0.3),
}


def _inputs(config: RunConfig, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = config.image_shape or (config.resolved_input_dim,)
    return torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("name", list(MODELS))
def test_centered_output_is_exactly_zero_at_init(name: str) -> None:
    config = MODELS[name]
    model = build_model(config)
    x = _inputs(config).to(next(model.parameters()).dtype)
    out = model(x)
    assert out.shape == (x.shape[0], config.resolved_out_dim)
    assert torch.equal(out, torch.zeros_like(out))
    # ...but the network itself is not trivial: after one SGD step f moves.
    loss_fn = make_loss(config)
    optimizer = build_optimizer(config, model)
    target = torch.ones_like(out)
    loss_fn(model(x), target, None).backward()
    optimizer.step()
    assert model(x).abs().max() > 0


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "vit", "toy"])
def test_same_seed_same_weights_and_seed_matters(name: str) -> None:
    config = MODELS[name]
    a, b = build_model(config), build_model(config)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    if name != "toy":  # the toy's init is the fixed balanced point
        c = build_model(config.replace(seed=1))
        assert not torch.equal(weight_layers(a)[0], weight_layers(c)[0])


def test_float64_model_starts_from_the_float32_weights() -> None:
    w32 = weight_layers(build_model(RunConfig(gamma=1.0)))
    w64 = weight_layers(build_model(RunConfig(gamma=1e-4)))
    assert w64[0].dtype == torch.float64
    assert all(torch.equal(a.double(), b) for a, b in zip(w32, w64))


@pytest.mark.parametrize(("name", "layers"), [("mlp", 3), ("cnn", 4), ("toy", 3)], ids=["mlp", "cnn", "toy"])
def test_weight_layers_are_W1_to_WL(name: str, layers: int) -> None:
    model = build_model(MODELS[name])
    ws, w0s = weight_layers(model), weight_layers(model.init_net)
    assert len(ws) == len(w0s) == layers
    assert all(w.requires_grad and not w0.requires_grad for w, w0 in zip(ws, w0s))


def test_init_is_N01_and_biases_zero() -> None:
    model = build_model(RunConfig(width=512, input_dim=256))
    w = weight_layers(model)[1].detach()
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1) < 0.01
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in model.net.hidden)


def test_learning_rate_scales_with_width_not_gamma() -> None:
    assert learning_rate(RunConfig(width=256, eta=0.01, gamma=1e-3)) == pytest.approx(2.56)
    assert learning_rate(RunConfig(width=256, eta=0.01, gamma=1e3)) == pytest.approx(2.56)
    assert learning_rate(MODELS["toy"].replace(eta=0.3)) == pytest.approx(0.3)
    assert learning_rate(RunConfig(width=256, eta=0.01, optimizer="adam")) == pytest.approx(0.01)


def test_centered_output_divides_by_gamma_a_scalar_or_one_per_member() -> None:
    """One definition serves the solo model (a float gamma) and the stacked ensemble ((K, 1, 1) gammas)."""
    assert centered_output(torch.tensor(3.0), torch.tensor(1.0), 0.5).item() == 4.0
    g = torch.Generator().manual_seed(0)
    out, out0 = (torch.randn(3, 5, 2, generator=g, dtype=torch.float64) for _ in range(2))
    gammas = (1e-3, 0.5, 40.0)
    stacked = centered_output(out, out0, torch.tensor(gammas, dtype=torch.float64).view(-1, 1, 1))
    for k, gamma in enumerate(gammas):
        assert torch.equal(stacked[k], centered_output(out[k], out0[k], gamma))
    model = build_model(RunConfig(width=16, gamma=2.0))
    x = _inputs(RunConfig(width=16))
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.1)
        assert torch.equal(model(x), centered_output(model.net(x), model.init_net(x), 2.0))


LOSSES = {
    "mse": RunConfig(),
    "mse-toy-halved": MODELS["toy"],
    "mse-summed-test-loss": RunConfig(task="teacher_cls"),
    "xent": RunConfig(task="teacher_cls", loss_fn="xent"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_stacked_loss_is_each_members_own_loss(name: str) -> None:
    """make_loss / make_test_loss with stacked=True: (K,) losses of (K, B, C) outputs, member k's equal
    to the solo loss of output[k] (the ensemble's training and test criteria)."""
    config = LOSSES[name]
    g = torch.Generator().manual_seed(0)
    c = config.resolved_out_dim
    out = torch.randn(3, 8, c, generator=g, dtype=torch.float64)
    y = torch.randn(8, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (8,), generator=g) if config.loss_fn == "xent" else None
    for make in (make_loss, make_test_loss):
        stacked = make(config, stacked=True)(out, y, labels)
        assert stacked.shape == (3,)
        solo = [make(config)(out[k], y, labels).item() for k in range(3)]
        assert stacked.tolist() == pytest.approx(solo, rel=1e-13)


def test_coordinate_check_activations_and_one_step_update_are_width_independent() -> None:
    """muP invariants: hidden pre-activations O(1) at init, and the change of f after one SGD step at
    lr = N * eta is O(1) and the same across widths (scale factors read from one place)."""
    x = _inputs(RunConfig(input_dim=32), n=64)
    y = torch.ones(64, 1)
    rms, deltas = [], []
    for width in (128, 512, 2048):
        config = RunConfig(width=width, input_dim=32, eta=0.05)
        model = build_model(config)
        h = model.net.hidden[0](x)
        rms.append(float(h.detach().pow(2).mean().sqrt()))
        loss_fn = make_loss(config)
        optimizer = build_optimizer(config, model)
        loss_fn(model(x), y, None).backward()
        optimizer.step()
        deltas.append(float(model(x).detach().pow(2).mean().sqrt()))
    assert max(rms) / min(rms) < 1.2 and 0.5 < min(rms)
    assert max(deltas) / min(deltas) < 1.25 and min(deltas) > 1e-3


# ----- kernel alignment ---------------------------------------------------------------------------


def _random_kernel(n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return phi @ phi.t()


def test_alignment_invariances() -> None:
    k, other = _random_kernel(seed=0), _random_kernel(seed=1)
    assert float(centered_alignment(k, k)) == pytest.approx(1.0, abs=1e-12)
    a = float(centered_alignment(k, other))
    assert -1 <= a <= 1
    assert float(centered_alignment(3.7 * k, other)) == pytest.approx(a, abs=1e-12)
    assert float(centered_alignment(k, 0.01 * other)) == pytest.approx(a, abs=1e-12)
    assert float(centered_alignment(k + 5.0, other)) == pytest.approx(a, abs=1e-12)  # constants are centered away
    assert float(centered_alignment(other, k)) == pytest.approx(a, abs=1e-12)
    h = center_kernel(k)
    assert torch.allclose(h.sum(dim=0), torch.zeros(12, dtype=torch.float64), atol=1e-10)


def test_cheap_feature_alignment_equals_the_definition() -> None:
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(20, 7, generator=g, dtype=torch.float64)
    targets = torch.nn.functional.one_hot(torch.randint(0, 3, (20,), generator=g), 3).double()
    target = TargetKernel(targets)
    slow = centered_alignment(phi @ phi.t(), targets @ targets.t())
    assert float(target.alignment_of_features(phi)) == pytest.approx(float(slow), abs=1e-12)
    assert float(target.alignment_of_kernel(phi @ phi.t())) == pytest.approx(float(slow), abs=1e-12)
    assert float(target.alignment_of_features(targets)) == pytest.approx(1.0, abs=1e-12)


# ----- NTK and sharpness -----------------------------------------------------------------------------


def _explicit_ntk(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    out = net(x)
    rows = []
    for i in range(x.shape[0]):
        for c in range(out.shape[1]):
            grads = torch.autograd.grad(out[i, c], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]))
    jac = torch.stack(rows).reshape(x.shape[0], out.shape[1], -1)
    return torch.einsum("icp,jcp->ij", jac, jac)


@pytest.mark.parametrize("name", ["mlp", "resnet"], ids=["per-example", "batchnorm"])
def test_empirical_ntk_matches_explicit_jacobian(name: str) -> None:
    config = MODELS[name].replace(dtype="float64")
    model = build_model(config)
    x = _inputs(config, n=5).double()
    buffers = [b.clone() for b in model.net.buffers()]
    fast = empirical_ntk(model.net, x)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.net.buffers()))  # no BN update
    assert torch.allclose(fast, _explicit_ntk(model.net, x), rtol=1e-9, atol=1e-12)


def test_sharpness_is_the_top_eigenvalue_of_a_known_hessian() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    for eigs in ([5.0, 2.0, 1.0, 0.5, 0.1, -0.3], [1.0, 0.5, 0.0, -2.0, -4.0, -0.1]):
        a = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.t()
        theta = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
        top = top_hessian_eigenvalue(lambda a=a, theta=theta: 0.5 * theta @ a @ theta, [theta], iters=200, generator=torch.Generator().manual_seed(1))
        assert top == pytest.approx(max(eigs), rel=1e-6)
        assert theta.grad is None


def test_sharpness_matches_the_exact_hessian_of_a_small_mlp_in_few_products() -> None:
    """An MLP on 10-class data (many close top eigenvalues): 30 Lanczos products give the top
    eigenvalue of the explicit Hessian (eigvalsh of the full matrix) to 1e-8; the loss is untouched."""
    config = RunConfig(model="mlp", task="gmm", width=12, depth=2, dtype="float64", out_dim=10, input_dim=6)
    model = build_model(config)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (40,), generator=g)
    y = torch.nn.functional.one_hot(labels, 10).double()
    loss = make_loss(config.replace(loss_fn="mse"))
    params = model.trainable_parameters()
    with torch.no_grad():  # move off init (f = 0 there) so that the Hessian has its curvature term
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    sizes = [p.numel() for p in params]

    def flat_loss(theta: torch.Tensor) -> torch.Tensor:
        parts = [t.view_as(p) for t, p in zip(theta.split(sizes), params)]
        out = torch.func.functional_call(model.net, dict(zip([n for n, _ in model.net.named_parameters()], parts)), (x,))
        return loss(out, y, labels)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, theta))
    assert len(theta) > 200 and float(exact[-1] - exact[-2]) < 0.5 * float(exact[-1])  # close eigenvalues
    top = top_hessian_eigenvalue(lambda: flat_loss(torch.cat([p.reshape(-1) for p in params])), params, iters=30,
                                 generator=torch.Generator().manual_seed(1))
    assert top == pytest.approx(float(exact[-1]), rel=1e-8)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e300])
def test_sharpness_of_a_diverging_network_is_a_value_not_an_error(bad: float) -> None:
    """Non-finite or huge curvature (a run on its way to divergence) comes back as a float."""
    theta = torch.tensor([1.0, bad, 2.0], dtype=torch.float64, requires_grad=True)
    top = top_hessian_eigenvalue(lambda: (theta**4).sum(), [theta], iters=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(top, float)
    if bad == 1e300:
        assert math.isinf(top) or top > 1e300
    else:
        assert not math.isfinite(top)
