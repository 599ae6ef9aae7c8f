"""The deep linear scalar model of docs/theory.md: closed forms, and a numeric check on the real trainer.

Model: width 1, depth L, one example x = 1, y = 1, balanced init w_l = 1,
f = (w_1 ... w_L - 1) / gamma (``gammadb.runners.models.ToyNet`` inside ``Centered``), trained by gradient
descent at rate eta (lr = width * eta with width 1).

Loss convention: the toy's loss is (f - y)^2 / 2 (``gammadb.runners.models.mse_prefactor``). Reason: at the
balanced minimum (prod w = 1 + gamma, residual 0) the Hessian is the Gauss-Newton term
c * 2 * grad f grad f^T for loss c (f - y)^2, with |grad f|^2 = L (1 + gamma)^(2(L-1)/L) / gamma^2. With
c = 1/2 its top eigenvalue is exactly docs/theory.md's lambda* and GD is stable iff eta < 2 / lambda*; with
c = 1 (MSELoss, as the networks use) both would be off by a factor 2. The balanced minimum is also
the flattest point of the solution set, so no catapult can settle anywhere flatter: beyond
2 / lambda* the run cannot converge. ``numeric_eta_max`` measures the edge on the trainer and the
tests hold it to the closed form.

The closed forms are numpy-vectorised and need no torch; the trainer is imported only when used.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from gammadb.runners.config import RunConfig


def lambda_star(gamma: ArrayLike, depth: ArrayLike) -> np.ndarray:
    """Top Hessian eigenvalue at the balanced minimum: L (1 + gamma)^(2(L-1)/L) / gamma^2.

    Broadcasts over ``gamma`` and ``depth``; returns a float array (0-d for scalars).
    """
    g = np.asarray(gamma, dtype=float)
    L = np.asarray(depth, dtype=float)
    return L * (1.0 + g) ** (2.0 * (L - 1.0) / L) / g**2


def eta_max(gamma: ArrayLike, depth: ArrayLike) -> np.ndarray:
    """Largest stable learning rate at the minimum, 2 / lambda*: ~ 2 gamma^2 / L for gamma << 1 and
    ~ (2 / L) gamma^(2/L) for gamma >> 1."""
    return 2.0 / lambda_star(gamma, depth)


def toy_config(gamma: float, eta: float, depth: int, *, steps: int = 1000, **fields: object) -> RunConfig:
    """A RunConfig of the toy model (width 1, batch 1, the single example)."""
    return RunConfig(
        model="toy", task="toy", width=1, batch_size=1, depth=depth, gamma=gamma, eta=eta, steps=steps,
        feature_alignment=False, ntk=False, **fields,  # type: ignore[arg-type]
    )


def converges(gamma: float, eta: float, depth: int, *, steps: int = 1000, rel_tol: float = 1e-8) -> bool:
    """Whether the trainer takes the toy from its initial loss (1/2) below ``rel_tol`` times that
    within ``steps`` steps, without diverging."""
    from gammadb.runners.train import ListSink, train

    sink = ListSink()
    outcome = train(toy_config(gamma, eta, depth, steps=steps, cadence="none", sharpness=False), sink, device="cpu")
    if outcome.status != "completed":
        return False
    losses = sink.values("loss")
    return math.isfinite(losses[-1]) and losses[-1] < rel_tol * losses[0]


def numeric_eta_max(gamma: float, depth: int, *, steps: int = 1000, rel_tol: float = 0.005, start: float = 1e4) -> float:
    """The largest eta at which ``converges`` holds, found on the trainer without the closed form.

    Halves eta from ``start`` until a run converges, then bisects in log(eta) between that rate and
    the next one up until they are within a factor (1 + rel_tol); returns the converging end.
    Assumes ``steps`` is long enough for rates just below the edge to converge (under-training would
    make the edge look lower).
    """
    hi = start
    lo = hi / 2
    while not converges(gamma, lo, depth, steps=steps):
        hi, lo = lo, lo / 2
        if lo < 1e-300:
            raise ValueError(f"no converging eta found for gamma={gamma}, depth={depth}")
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(hi * lo)
        if converges(gamma, mid, depth, steps=steps):
            lo = mid
        else:
            hi = mid
    return lo
