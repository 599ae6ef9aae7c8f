"""The theory's clock: tau = eta t / gamma (docs/theory.md), one definition for every analysis and chart.

At large gamma a run's trajectory depends on its step t only through tau, so runs at different
(gamma, eta) are compared at equal tau. Units: t in steps, tau dimensionless (steps x eta / gamma).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def tau(step: float, eta: float, gamma: float) -> float:
    """tau = eta * step / gamma (works on numpy arrays as well as floats)."""
    return eta * step / gamma


def step_at_tau(tau_value: float, eta: float, gamma: float) -> float:
    """The step at which a run at (gamma, eta) reaches ``tau_value``: the inverse of :func:`tau`."""
    return tau_value * gamma / eta


def tau_expr(step: str = "step", eta: str = "eta", gamma: str = "gamma") -> "pl.Expr":
    """:func:`tau` as a polars expression over the columns ``step``, ``eta`` and ``gamma``, named
    ``tau`` (alias it where another name is wanted)."""
    import polars as pl

    return tau(pl.col(step), pl.col(eta), pl.col(gamma)).alias("tau")
