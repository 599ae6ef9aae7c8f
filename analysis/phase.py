"""The (gamma, eta) phase portrait (docs/theory.md claim 2): every cell is diverged, trained, under-trained
or catapult, with the trainable band's edges per gamma.

Per run (loss at the budget = tail-mean training loss up to the budget, initial = first logged loss):
- diverged: a NaN/inf at any step;
- catapult: the loss rose above ``spike`` x its initial value before the budget and the loss at the
  budget is below the initial value (docs/theory.md claim 6: an early spike, then descent);
- trained: loss at the budget < ``threshold`` x initial (it left the initial plateau);
- under-trained: otherwise (still on the plateau at the budget).
A cell (gamma, eta, seeds pooled) is diverged if any seed diverged, catapult if at least half of its
seeds are, else trained or under-trained by the seed-mean loss ratio.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

from gammadb.analysis._common import check_fraction, load_runs
from gammadb.analysis.etas import LEFT_PLATEAU
from gammadb.analysis.optimal_lr import index_groups
from gammadb.errors import InvalidSpecError
from gammadb.records import RUN_COLUMNS

if TYPE_CHECKING:
    from gammadb.store import Store


class Phase(str, enum.Enum):
    diverged = "diverged"
    catapult = "catapult"
    trained = "trained"
    under_trained = "under-trained"


PHASES = tuple(p.value for p in Phase)
TRAINABLE = (Phase.trained.value, Phase.catapult.value)


@dataclasses.dataclass(frozen=True)
class PhaseMap:
    sweep: str
    budget_step: int
    threshold: float
    spike: float
    groups: pl.DataFrame
    cells: pl.DataFrame  # group_idx, group columns, gamma, eta, phase, loss_ratio, peak_ratio, n_seeds, n_diverged
    boundaries: pl.DataFrame  # group_idx, group columns, gamma, eta_lower, eta_upper, band_decades, eta_diverged, n_<phase>
    closed: pl.DataFrame  # group_idx, gamma_closed

    def to_json(self) -> dict[str, Any]:
        groups = []
        for g in self.groups.iter_rows(named=True):
            i = g["group_idx"]
            cells = self.cells.filter(pl.col("group_idx") == i).sort("gamma", "eta")
            bounds = self.boundaries.filter(pl.col("group_idx") == i).sort("gamma")
            closed = self.closed.filter(pl.col("group_idx") == i)["gamma_closed"]
            groups.append({
                "group": {c: g[c] for c in RUN_COLUMNS},
                "cells": cells.select("gamma", "eta", "phase", "loss_ratio", "peak_ratio", "n_seeds",
                                      "n_diverged").to_dicts(),
                "boundaries": bounds.select("gamma", "eta_lower", "eta_upper", "band_decades", "eta_diverged",
                                            *(f"n_{_col(p)}" for p in PHASES)).to_dicts(),
                "gamma_closed": closed[0] if closed.len() else None,
            })
        return {"sweep": self.sweep, "budget_step": self.budget_step, "threshold": self.threshold,
                "spike": self.spike, "groups": groups}


def _col(phase: str) -> str:
    return phase.replace("-", "_")


def analyze(store: "Store", sweep: str, *, budget: Optional[int] = None, threshold: float = LEFT_PLATEAU,
            spike: float = 2.0) -> PhaseMap:
    """The phase map of ``sweep`` at ``budget``, once per page (:func:`gammadb.analysis.shared.shared_reads`)."""
    from gammadb.analysis.shared import shared_result

    _check(threshold, spike)

    def build() -> PhaseMap:
        table = load_runs(store, sweep, budget=budget, want_max=True)
        return phase_map(table.frame, sweep, table.budget_step, threshold=threshold, spike=spike)

    return shared_result(store, ("phase.analyze", sweep, budget, threshold, spike), build)


def _check(threshold: float, spike: float) -> None:
    check_fraction("--threshold", threshold)
    if not (spike > 1.0) or not math.isfinite(spike):
        raise InvalidSpecError(f"--spike must be a factor above 1, got {spike}")


def classify_runs(runs: pl.DataFrame, *, threshold: float = LEFT_PLATEAU, spike: float = 2.0) -> pl.DataFrame:
    """Add ``ratio`` (loss at the budget / initial), ``peak_ratio`` (max loss / initial) and
    ``phase`` to a per-run table."""
    ratio = pl.col("tail_mean_loss") / pl.col("initial_loss")
    peak = pl.col("max_loss") / pl.col("initial_loss")
    return runs.with_columns(ratio.alias("ratio"), peak.alias("peak_ratio")).with_columns(
        pl.when(pl.col("diverged")).then(pl.lit(Phase.diverged.value))
        .when((pl.col("peak_ratio") > spike) & (pl.col("ratio") < 1.0)).then(pl.lit(Phase.catapult.value))
        .when(pl.col("ratio") < threshold).then(pl.lit(Phase.trained.value))
        .otherwise(pl.lit(Phase.under_trained.value)).alias("phase")
    )


def classify_cells(runs: pl.DataFrame, *, threshold: float = LEFT_PLATEAU, spike: float = 2.0) -> pl.DataFrame:
    """One row per (group_idx, gamma, eta) with its phase (see the module docstring)."""
    r = classify_runs(runs, threshold=threshold, spike=spike)
    cells = r.group_by("group_idx", "gamma", "eta").agg(
        pl.len().alias("n_seeds"),
        pl.col("diverged").sum().cast(pl.Int64).alias("n_diverged"),
        (pl.col("phase") == Phase.catapult.value).sum().alias("n_catapult"),
        pl.col("ratio").filter(~pl.col("diverged")).mean().alias("loss_ratio"),
        pl.col("peak_ratio").filter(~pl.col("diverged")).max().alias("peak_ratio"),
    )
    return cells.with_columns(
        pl.when(pl.col("n_diverged") > 0).then(pl.lit(Phase.diverged.value))
        .when(2 * pl.col("n_catapult") >= pl.col("n_seeds")).then(pl.lit(Phase.catapult.value))
        .when(pl.col("loss_ratio") < threshold).then(pl.lit(Phase.trained.value))
        .otherwise(pl.lit(Phase.under_trained.value)).alias("phase"),
        pl.col("n_seeds").cast(pl.Int64),
    ).with_columns(
        pl.when(pl.col("phase") == Phase.diverged.value).then(None).otherwise(pl.col("loss_ratio")).alias("loss_ratio"),
        pl.when(pl.col("phase") == Phase.diverged.value).then(None).otherwise(pl.col("peak_ratio")).alias("peak_ratio"),
    ).select("group_idx", "gamma", "eta", "phase", "loss_ratio", "peak_ratio", "n_seeds", "n_diverged"
             ).sort("group_idx", "gamma", "eta")


def boundaries(cells: pl.DataFrame) -> pl.DataFrame:
    """Per (group, gamma): the trainable band [eta_lower, eta_upper] (trained or catapult cells), its
    width in decades, the smallest diverged eta, and the cell count of each phase."""
    trainable = pl.col("phase").is_in(TRAINABLE)
    return cells.group_by("group_idx", "gamma").agg(
        pl.col("eta").filter(trainable).min().alias("eta_lower"),
        pl.col("eta").filter(trainable).max().alias("eta_upper"),
        pl.col("eta").filter(pl.col("phase") == Phase.diverged.value).min().alias("eta_diverged"),
        *((pl.col("phase") == p).sum().cast(pl.Int64).alias(f"n_{_col(p)}") for p in PHASES),
    ).with_columns(
        (pl.col("eta_upper") / pl.col("eta_lower")).log10().alias("band_decades"),
    ).select("group_idx", "gamma", "eta_lower", "eta_upper", "band_decades", "eta_diverged",
             *(f"n_{_col(p)}" for p in PHASES)).sort("group_idx", "gamma")


def gamma_closed(bounds: pl.DataFrame) -> pl.DataFrame:
    """Per group, the smallest gamma from which on no cell is trainable (the band has closed), when
    some smaller gamma had a trainable cell; null when the band never closes on the grid."""
    rows = []
    for (gi,), b in bounds.sort("gamma").group_by(["group_idx"], maintain_order=True):
        open_ = (b["n_trained"] + b["n_catapult"] > 0).to_list()
        gam = b["gamma"].to_list()
        closed = None
        if any(open_) and not open_[-1]:
            last_open = max(i for i, o in enumerate(open_) if o)
            closed = gam[last_open + 1]
        rows.append({"group_idx": gi, "gamma_closed": closed})
    return pl.DataFrame(rows, schema={"group_idx": pl.Int64, "gamma_closed": pl.Float64})


def phase_map(runs: pl.DataFrame, sweep: str, budget_step: int, *, threshold: float = LEFT_PLATEAU,
              spike: float = 2.0) -> PhaseMap:
    _check(threshold, spike)
    groups, runs = index_groups(runs)
    cells = classify_cells(runs, threshold=threshold, spike=spike)
    bounds = boundaries(cells)
    closed = gamma_closed(bounds)
    cols = groups.drop("group_idx").columns
    return PhaseMap(
        sweep, budget_step, threshold, spike, groups,
        cells.join(groups, on="group_idx").select(*cells.columns, *cols).sort("group_idx", "gamma", "eta"),
        bounds.join(groups, on="group_idx").select(*bounds.columns, *cols).sort("group_idx", "gamma"),
        closed,
    )


def report_tables(pm: PhaseMap) -> list[tuple[str, pl.DataFrame]]:
    """(title, frame) pairs for the terminal: per group the band per gamma and where it closes."""
    out = []
    for g in pm.groups.iter_rows(named=True):
        i = g["group_idx"]
        name = ", ".join(f"{c}={g[c]}" for c in RUN_COLUMNS if g[c] not in (None, "unknown")) or "all runs"
        closed = pm.closed.filter(pl.col("group_idx") == i)["gamma_closed"]
        where = f"closes at gamma = {closed[0]:.3g}" if closed.len() and closed[0] is not None else "does not close"
        bounds = pm.boundaries.filter(pl.col("group_idx") == i).select(
            "gamma", "eta_lower", "eta_upper", "band_decades", "eta_diverged", *(f"n_{_col(p)}" for p in PHASES))
        out.append((f"{pm.sweep} ({name}): trainable band per gamma at step {pm.budget_step} (band {where})",
                    bounds))
    return out
