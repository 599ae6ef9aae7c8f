"""What the trainer measures besides the loss: kernel alignment, the empirical NTK, sharpness, test error.

All functions leave the model's parameters, gradients and (with ``preserved_buffers``) BatchNorm
statistics untouched, and draw no global randomness, so measuring never changes a run's trajectory.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from gammadb.runners.models import ScaledLinear

# ----- centered kernel alignment ------------------------------------------------------------------


def center_kernel(kernel: Tensor) -> Tensor:
    """H K H with H = I - 11^T/n (subtract row and column means, add back the grand mean)."""
    return kernel - kernel.mean(dim=0, keepdim=True) - kernel.mean(dim=1, keepdim=True) + kernel.mean()


def centered_alignment(k1: Tensor, k2: Tensor) -> Tensor:
    """A(K1, K2) = <H K1 H, H K2 H>_F / (||H K1 H||_F ||H K2 H||_F), a 0-d tensor in [-1, 1].

    Invariant to scaling either kernel by c > 0 and to adding a constant to it; NaN when a centered
    kernel is zero (alignment undefined).
    """
    c1, c2 = center_kernel(k1), center_kernel(k2)
    return (c1 * c2).sum() / (torch.linalg.matrix_norm(c1) * torch.linalg.matrix_norm(c2))


class TargetKernel:
    """The centered target kernel H Y H, Y = T T^T, of a fixed batch, precomputed for per-step use.

    ``alignment_of_features(phi)`` equals ``centered_alignment(phi phi^T, Y)`` but costs one (n x n)
    product of centered features: H (phi phi^T) H = (H phi)(H phi)^T, and H Y H is computed once.
    """

    def __init__(self, targets: Tensor):
        t = targets.reshape(targets.shape[0], -1)
        t = t - t.mean(dim=0, keepdim=True)
        self.centered = t @ t.t()
        self.norm = torch.linalg.matrix_norm(self.centered)

    def alignment_of_features(self, features: Tensor) -> Tensor:
        phi = features - features.mean(dim=0, keepdim=True)
        k = phi @ phi.t()
        return (k * self.centered).sum() / (torch.linalg.matrix_norm(k) * self.norm)

    def alignment_of_kernel(self, kernel: Tensor) -> Tensor:
        c = center_kernel(kernel)
        return (c * self.centered).sum() / (torch.linalg.matrix_norm(c) * self.norm)


# ----- empirical NTK ---------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_buffers(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Restore all buffers (BatchNorm running statistics) on exit: a train-mode measurement forward
    must not count as a training step."""
    if not enabled:
        yield
        return
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)


def empirical_ntk(net: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    """The output-traced empirical NTK on the batch ``x``: K_ij = sum_c <df_c(x_i)/dtheta, df_c(x_j)/dtheta>.

    ``net`` is the raw network f_NN (the centered model's NTK is this divided by gamma^2; alignments
    and relative distances do not see the factor). ``params`` defaults to the net's trainable
    parameters; pass theta_0's to get K at init. The kernel is (n, n) in ``x``'s dtype. The net's
    parameters, gradients and buffers are never changed (buffers are passed as copies).

    Two ways, the same kernel up to rounding:

    - Layer-wise (``_ntk_by_layers``), when every parameter in ``params`` is the weight or bias of a
      ``ScaledLinear`` y = m (a W^T + b) that the forward calls once on a 2-D (n, fan_in) input, and
      no module mixes examples (BatchNorm) or draws randomness (dropout). An example's gradient w.r.t.
      W is then m g a^T, so the layer adds m^2 (G G^T) * (A A^T [+ 1 with bias]), elementwise, with A
      the layer's inputs and G the gradients of f_c w.r.t. its outputs (one backward per output c):
      O(n^2 (fan_in + fan_out)) per layer instead of O(n^2 fan_in fan_out).
    - Otherwise per-example gradients (``_ntk_by_example_gradients``): see there.
    """
    if params is None:
        params = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
    kernel = _ntk_by_layers(net, x, params)
    return kernel if kernel is not None else _ntk_by_example_gradients(net, x, params)


# Modules under which the layer-wise NTK is not exact: an example's output depends on the batch
# (BatchNorm in training) or on random draws.
_EXAMPLE_MIXING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _layer_parameters(net: nn.Module, params: dict[str, Tensor]) -> dict[ScaledLinear, tuple[bool, bool]] | None:
    """{layer: (weight in params, bias in params)} when the layer-wise NTK applies to ``net`` and
    ``params`` (structure only; the forward checks the calls), else None."""
    if any(isinstance(m, _EXAMPLE_MIXING) for m in net.modules()):
        return None
    # A parameter shared between modules would collect gradient from each: not a single layer's term.
    if len(list(net.named_parameters(remove_duplicate=False))) != len(list(net.named_parameters())):
        return None
    owners: dict[str, tuple[ScaledLinear, str]] = {}
    for prefix, module in net.named_modules():
        if isinstance(module, ScaledLinear):
            for kind in ("weight", "bias"):
                owners[f"{prefix}.{kind}" if prefix else kind] = (module, kind)
    layers: dict[ScaledLinear, tuple[bool, bool]] = {}
    for name in params:
        if name not in owners or getattr(owners[name][0], owners[name][1]) is None:
            return None
        layer, kind = owners[name]
        weight, bias = layers.get(layer, (False, False))
        layers[layer] = (weight or kind == "weight", bias or kind == "bias")
    return layers


def _ntk_by_layers(net: nn.Module, x: Tensor, params: dict[str, Tensor]) -> Tensor | None:
    """The layer-wise empirical NTK (see ``empirical_ntk``), or None where it does not apply."""
    layers = _layer_parameters(net, params)
    if not layers:
        return None
    n = x.shape[0]
    calls: dict[ScaledLinear, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        # A zero leaf added to the output: d f / d zero = d f / d output, with or without parameters
        # that require grad (theta_0's do not), and y + 0 = y bit for bit.
        zero = torch.zeros_like(output, requires_grad=True)
        calls[layer].append((inputs[0].detach(), zero))  # type: ignore[index]
        return output + zero

    handles = [layer.register_forward_hook(record) for layer in layers]
    detached = {k: v.detach() for k, v in params.items()}
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    with torch.enable_grad():  # whatever the caller's grad mode
        try:
            out = functional_call(net, (detached, buffers), (x.detach(),)).reshape(n, -1)
        finally:
            for handle in handles:
                handle.remove()
        for layer, seen in calls.items():
            if len(seen) != 1 or seen[0][0].dim() != 2 or seen[0][0].shape[0] != n:
                return None  # called twice, or on tokens: an example's gradient is not one outer product
        zeros = [calls[layer][0][1] for layer in layers]
        grads: list[list[Tensor]] = [[] for _ in layers]
        for c in range(out.shape[1]):
            # Examples are independent (no BatchNorm): one backward of the sum gives every example's g.
            # A layer whose output f_c does not reach gets zeros (materialize_grads).
            per_c = torch.autograd.grad(out[:, c].sum(), zeros, retain_graph=True, materialize_grads=True)
            for per_layer, g in zip(grads, per_c):
                per_layer.append(g)
    kernel = torch.zeros(n, n, dtype=out.dtype, device=out.device)
    for (layer, (weight, bias)), per_output in zip(layers.items(), grads):
        g = torch.cat(per_output, dim=1)  # (n, out_dim * fan_out): sum_c G_c G_c^T in one product
        inputs = calls[layer][0][0]
        a = inputs @ inputs.t() if weight else torch.zeros_like(kernel)
        if bias:
            a = a + 1.0
        kernel += layer.multiplier**2 * (g @ g.t()) * a
    return kernel.to(x.dtype)


def _ntk_by_example_gradients(net: nn.Module, x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """The empirical NTK from per-example gradients, for any network; built one output at a time, so
    memory stays at n x (number of parameters).

    Without BatchNorm, per-example gradients (vmap over examples) are cheapest. With BatchNorm an
    example's output depends on the whole batch, so the Jacobian of the batch output is taken instead
    (jacrev; about n times the work), on a copy whose BatchNorms use batch statistics as in training.
    """
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if batchnorm:
        # A grad transform may not update running statistics in place.
        net = copy.deepcopy(net)
        torch.func.replace_all_batch_norm_modules_(net)
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    n = x.shape[0]
    with torch.no_grad():
        out_dim = functional_call(net, (params, buffers), (x[:2],)).reshape(2, -1).shape[1]
    kernel = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    for c in range(out_dim):
        if batchnorm:
            def batch_output(p: dict[str, Tensor], c: int = c) -> Tensor:
                return functional_call(net, (p, buffers), (x,)).reshape(n, -1)[:, c]

            jacobian = jacrev(batch_output)(params)
        else:
            def example_output(p: dict[str, Tensor], xi: Tensor, c: int = c) -> Tensor:
                return functional_call(net, (p, buffers), (xi.unsqueeze(0),)).reshape(-1)[c]

            jacobian = vmap(grad(example_output), in_dims=(None, 0))(params, x)
        for jac in jacobian.values():
            j = jac.reshape(n, -1)
            kernel += j @ j.t()
    return kernel


# ----- sharpness -------------------------------------------------------------------------------------


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    iters: int = 20,
    generator: torch.Generator | None = None,
    tol: float = 1e-9,
) -> float:
    """The largest (most positive) eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Lanczos with full reorthogonalisation: at most ``iters`` Hessian-vector products (double backward;
    the gradient graph is built once) span a Krylov space; the answer is the top eigenvalue (Ritz
    value) of the projected tridiagonal matrix. It stops early once the Ritz pair's residual
    ||H y - theta y|| is below ``tol * |theta|`` (theta is then within that distance of an eigenvalue of
    H). For the same number of products this is far more accurate than power iteration when the top
    eigenvalues are close (MLP on MNIST, 20 products: relative error 1e-14 against 3e-2), and it needs
    fewer where they are not (benchmarks/bench_sharpness.py); a negative dominant eigenvalue needs no
    second pass. Memory: ``iters`` vectors of the parameter count. The start vector comes from
    ``generator`` (CPU), not the global RNG. Never touches ``.grad``.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]
    dtype, device = params[0].dtype, params[0].device
    start = torch.cat([torch.randn(p.shape, generator=generator, dtype=dtype).reshape(-1) for p in params])

    def hvp(rows: Tensor) -> Tensor:
        vec = [part.view_as(p) for part, p in zip(rows[0].split(sizes), params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).unsqueeze(0)

    steps = max(1, min(iters, sum(sizes)))
    return _lanczos_group(hvp, start.to(device).unsqueeze(0), steps, tol)[0]


def top_hessian_eigenvalues(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    start: Sequence[Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-9,
    max_basis_bytes: int = 1 << 30,
) -> list[float]:
    """``top_hessian_eigenvalue`` for K independent members at once (a stacked ensemble).

    Every tensor in ``params`` carries a leading member axis (member k's parameters in slice k) and
    ``loss_fn()`` is the sum of the members' losses, so the Hessian is block diagonal and one
    Hessian-vector product of the stack serves every member. ``start`` holds each member's start
    vector laid out like ``params``. Each member runs the same Lanczos, with the same stopping rule,
    as it would alone; returns the K top eigenvalues (non-finite for a member whose curvature is).
    Members go in groups whose Lanczos vectors fit in ``max_basis_bytes``.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    k = params[0].shape[0]
    sizes = [p[0].numel() for p in params]
    steps = max(1, min(iters, sum(sizes)))
    starts = torch.cat([t.reshape(k, -1) for t in start], dim=1)

    def hvp(rows: Tensor, members: list[int]) -> Tensor:
        """H_m v_m for the members' rows (the other members get a zero vector)."""
        full = torch.zeros_like(starts)
        full[members] = rows
        vec = [part.reshape(p.shape) for part, p in zip(full.split(sizes, dim=1), params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        return torch.cat([t.reshape(k, -1) for t in hv], dim=1)[members]

    group = max(1, max_basis_bytes // (steps * starts.shape[1] * starts.element_size()))
    out: list[float] = []
    for lo in range(0, k, group):
        members = list(range(lo, min(k, lo + group)))
        out.extend(_lanczos_group(lambda rows, members=members: hvp(rows, members), starts[members], steps, tol))
    return out


def _lanczos_group(hvp: Callable[[Tensor], Tensor], start: Tensor, steps: int, tol: float) -> list[float]:
    """Lanczos with full reorthogonalisation on the rows of ``start`` (one member each) at once, each
    row stopping by its own residual; ``hvp`` maps rows to their Hessian-vector products. The one
    implementation behind ``top_hessian_eigenvalue`` (one row) and ``top_hessian_eigenvalues``."""
    k = start.shape[0]
    basis = torch.zeros(steps, *start.shape, dtype=start.dtype, device=start.device)
    basis[0] = start / torch.linalg.vector_norm(start, dim=1, keepdim=True)
    alphas: list[list[float]] = [[] for _ in range(k)]
    betas: list[list[float]] = [[] for _ in range(k)]
    result: list[float | None] = [None] * k
    active = list(range(k))
    beta = torch.zeros(k, dtype=start.dtype, device=start.device)
    for j in range(steps):
        hv = hvp(basis[j])
        alpha = (hv * basis[j]).sum(dim=1)
        host = alpha.tolist()
        for m in active:
            alphas[m].append(host[m])
            if not math.isfinite(host[m]):  # a diverging member: the non-finite value is the data
                result[m] = host[m]
        active = [m for m in active if result[m] is None]
        if not active or j + 1 == steps:
            break
        w = hv - alpha[:, None] * basis[j] - (beta[:, None] * basis[j - 1] if j else 0.0)
        done = basis[: j + 1]
        w = w - torch.einsum("jk,jkn->kn", torch.einsum("kn,jkn->jk", w, done), done)  # reorthogonalise
        beta = torch.linalg.vector_norm(w, dim=1)
        host = beta.tolist()
        for m in active:
            if not math.isfinite(host[m]):
                result[m] = host[m]
        finite = [m for m in active if result[m] is None]
        for m, (theta, last) in zip(finite, _top_ritz_many([alphas[m] for m in finite], [betas[m] for m in finite])):
            if host[m] * abs(last) <= tol * max(abs(theta), 1e-300):  # converged, or an invariant subspace
                result[m] = theta
        active = [m for m in finite if result[m] is None]
        if not active:
            break
        for m in active:
            betas[m].append(host[m])
        keep = torch.zeros(k, dtype=torch.bool, device=start.device)
        keep[active] = True
        beta = torch.where(keep, beta, 1.0)
        basis[j + 1] = torch.where(keep[:, None], w / beta[:, None], 0.0)
    for m, (theta, _) in zip(active, _top_ritz_many([alphas[m] for m in active], [betas[m] for m in active])):
        result[m] = theta
    return [float(r) for r in result]  # type: ignore[arg-type]


def _top_ritz_many(alphas: list[list[float]], betas: list[list[float]]) -> list[tuple[float, float]]:
    """The top eigenvalue of each Lanczos tridiagonal matrix (all of one size) and the last entry of
    its eigenvector, in one batched eigh. Each is scaled to unit size first (finite entries), so that
    huge curvatures near divergence stay in range."""
    if not alphas:
        return []
    a = torch.tensor(alphas, dtype=torch.float64)
    b = torch.tensor(betas, dtype=torch.float64).reshape(len(alphas), -1)
    scale = a.abs().amax(dim=1)
    if b.shape[1]:
        scale = torch.maximum(scale, b.amax(dim=1))
    scale = torch.where(scale > 0, scale, 1.0)
    t = torch.diag_embed(a / scale[:, None])
    if b.shape[1]:
        off = b / scale[:, None]
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    values, vectors = torch.linalg.eigh(t)
    return list(zip((values[:, -1] * scale).tolist(), vectors[:, -1, -1].tolist()))


# ----- test error ------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    labels: Tensor | None,
    loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    *,
    chunk: int = 1000,
) -> tuple[float, float | None]:
    """(mean loss, accuracy or None) of ``model`` on a fixed set, in eval mode, in chunks.

    The loss is ``loss_fn`` averaged over examples (chunks weighted by size; the trainer passes
    ``gammadb.runners.models.make_test_loss``); accuracy is the fraction of argmax predictions equal
    to ``labels`` (classification only).
    """
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        hits = torch.zeros((), dtype=torch.int64, device=x.device)
        n = x.shape[0]
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            out = model(x[start:stop])
            part_labels = None if labels is None else labels[start:stop]
            total += loss_fn(out, y[start:stop], part_labels).to(torch.float64) * (stop - start)
            if part_labels is not None:
                hits += (out.argmax(dim=1) == part_labels).sum()
        accuracy = None if labels is None else float(hits) / n
        return float(total) / n, accuracy
    finally:
        model.train(was_training)
