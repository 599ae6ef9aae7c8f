"""What to run instead: the grid a claim of :mod:`gammadb.analysis.claims` needs, as a `gammadb run` line.

Owns the sweep as it stands (:class:`SweepGrid`: its stored spec and the gammas, etas, seeds and steps its
runs cover) and the grid grown from it that would make a claim testable (:class:`Needs`: more gammas in a
regime, etas past a censored edge, seeds for an interval, steps for curves still on the plateau), and
renders that grid as a `gammadb run` command line. The verdicts themselves live in
:mod:`gammadb.analysis.claims`.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import polars as pl


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """The sweep as it stands: its stored spec and the grid its runs cover."""

    name: str
    spec: Mapping[str, Any]
    gammas: tuple[float, ...]
    etas: tuple[float, ...]
    n_seeds: int
    steps: int
    runs: pl.DataFrame  # one row per run: the run columns

    @classmethod
    def read(cls, store: Any, sweep: str, spec: Mapping[str, Any]) -> "SweepGrid":
        runs = store.runs_frame(sweep)
        gammas = tuple(sorted(set(runs["gamma"].to_list()))) if runs.height else tuple(spec.get("gamma", ()))
        etas = tuple(sorted(set(runs["eta"].to_list()))) if runs.height else tuple(spec.get("eta", ()))
        n_seeds = runs["seed"].n_unique() if runs.height else len(spec.get("seeds", ())) or 1
        planned = runs["steps_planned"].drop_nulls() if runs.height else pl.Series([], dtype=pl.Int64)
        steps = int(spec.get("steps") or (planned.max() if planned.len() else 0) or 1000)
        return cls(sweep, dict(spec), gammas, etas, int(n_seeds), steps, runs)

    @property
    def depth(self) -> Optional[int]:
        if "depth" in self.runs.columns and self.runs["depth"].drop_nulls().n_unique() == 1:
            return int(self.runs["depth"].drop_nulls()[0])
        # No runs yet (an adaptive scan creates them level by level): the spec's base says.
        base = self.spec.get("base")
        depth = base.get("depth") if isinstance(base, Mapping) else None
        return int(depth) if isinstance(depth, int) and not self.runs.height else None

    def needs(self, group: Optional[Mapping[str, Any]] = None) -> "Needs":
        g_lo, g_hi = (min(self.gammas), max(self.gammas)) if self.gammas else (1.0, 1.0)
        e_lo, e_hi = (min(self.etas), max(self.etas)) if self.etas else (1e-3, 1.0)
        return Needs(self, dict(group or {}), g_lo, g_hi, e_lo, e_hi, self.n_seeds, self.steps, {})


def _per_decade(values: Sequence[float], floor: int = 2) -> int:
    """Points per decade of a log grid (at least ``floor``, at most 8)."""
    if len(values) < 2:
        return floor
    span = math.log10(max(values) / min(values))
    return int(min(8, max(floor, round((len(values) - 1) / span)))) if span > 0 else floor


def _log_grid(lo: float, hi: float, per_decade: int) -> str:
    """'lo:hi:n' with lo, hi on whole decades, so the points coincide with any 10^(k/per_decade) grid."""
    a, b = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    b = max(b, a + 1)
    return f"1e{a}:1e{b}:{(b - a) * per_decade + 1}"


_FLAGS = {"model": "--model", "task": "--task", "depth": "--depth", "width": "--width",
          "batch_size": "--batch-size", "loss_fn": "--loss", "optimizer": "--optimizer", "dtype": "--dtype",
          "cadence": "--cadence", "data_dir": "--data-dir"}


@dataclasses.dataclass(frozen=True)
class Needs:
    """The grid a claim needs, grown from the sweep's own; ``command`` renders it as `gammadb run`."""

    grid: SweepGrid
    group: dict[str, Any]
    gamma_lo: float
    gamma_hi: float
    eta_lo: float
    eta_hi: float
    seeds: int
    steps: int
    overrides: dict[str, Any]

    def cover_gammas(self, lo: float, hi: float, depth: Optional[int]) -> "Needs":
        """Reach gammas ``lo``..``hi``; the eta grid follows eta* into the new gammas (gamma^2 below,
        gamma^(2/L) above the present range) so that the new points have an eta* inside it."""
        new_lo, new_hi = min(self.gamma_lo, lo), max(self.gamma_hi, hi)
        down = math.log10(self.gamma_lo / new_lo)
        up = math.log10(new_hi / self.gamma_hi)
        slope_up = 2.0 / depth if depth else 1.0
        return dataclasses.replace(self, gamma_lo=new_lo, gamma_hi=new_hi,
                                   eta_lo=self.eta_lo / 10 ** (2 * down), eta_hi=self.eta_hi * 10 ** (slope_up * up),
                                   seeds=max(self.seeds, 3))

    def cover_regime(self, regime: str, settings: Any, depth: Optional[int]) -> "Needs":
        """Two decades of gammas on one side (5 on a half-decade grid): down to small_max / 100 or up
        to large_min * 100."""
        if regime == "small_gamma":
            return self.cover_gammas(settings.small_max / 100, self.gamma_hi, depth)
        return self.cover_gammas(self.gamma_lo, settings.large_min * 100, depth)

    def widen_eta(self, low: float = 0.0, high: float = 0.0) -> "Needs":
        return dataclasses.replace(self, eta_lo=self.eta_lo / 10**low, eta_hi=self.eta_hi * 10**high)

    def more_steps(self, factor: int) -> "Needs":
        return dataclasses.replace(self, steps=self.grid.steps * factor)

    def more_seeds(self, n: int = 3) -> "Needs":
        """At least ``n`` seeds: enough for a bootstrap interval over seeds."""
        return dataclasses.replace(self, seeds=max(self.seeds, n))

    def override(self, **fields: Any) -> "Needs":
        return dataclasses.replace(self, overrides={**self.overrides, **fields})

    def command(self) -> str:
        spec = self.grid.spec
        base = spec.get("base") if isinstance(spec.get("base"), Mapping) else None
        parts = ["gammadb", "run"]
        if base is not None:
            from gammadb.runners.presets import preset

            # flags start from the quick preset (what `gammadb run` starts from): give what differs
            quick = preset("quick").base.to_dict()
            same_runs = self.steps == self.grid.steps and not self.overrides
            parts += ["--name", self.grid.name if same_runs else f"{self.grid.name}-claims"]
            fields = {k: v for k, v in base.items() if k != "steps"}
            fields.update(self.overrides)
            for k, v in fields.items():
                if v is None or (not isinstance(v, list) and quick.get(k) == v):
                    continue
                text = ",".join(_flag_text(x) for x in v) if isinstance(v, list) else _flag_text(v)
                parts += [_FLAGS[k], text] if k in _FLAGS else ["--set", f"{k}={text}"]
            if spec.get("adaptive"):
                parts += ["--adaptive", "--decades-below", f"{spec.get('decades_below', 3.0):g}"]
        else:  # an imported sweep: a gammadb sweep of the same shape, from the closest preset
            g = {**self.group, **self.overrides}
            model = g.get("model", self.grid.runs["model"][0] if self.grid.runs.height else None)
            parts += ["--preset", "toy" if model == "toy" else "quick", "--name", f"{self.grid.name}-claims"]
            depth = g.get("depth", self.grid.depth)
            if depth is not None:
                parts += ["--depth", str(depth)]
            for k in ("model", "task", "loss_fn", "optimizer"):
                if k in self.overrides:
                    parts += [_FLAGS[k], str(self.overrides[k])]
        return " ".join(shlex.quote(p) for p in parts + self._grid_parts())

    def flags(self) -> str:
        """The grid part of :meth:`command`: '--gamma lo:hi:n --eta lo:hi:n --seeds N --steps N'."""
        return " ".join(shlex.quote(p) for p in self._grid_parts())

    def _grid_parts(self) -> list[str]:
        g_pd = _per_decade(self.grid.gammas)
        e_pd = _per_decade(self.grid.etas)
        return ["--gamma", _log_grid(self.gamma_lo, self.gamma_hi, g_pd),
                "--eta", _log_grid(self.eta_lo, self.eta_hi, e_pd),
                "--seeds", str(self.seeds), "--steps", str(self.steps)]


def _flag_text(value: Any) -> str:
    """A config value as `gammadb run` parses it back (booleans as true/false)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
