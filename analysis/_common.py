"""Shared pieces of the learning-rate analyses: the per-run table read from the store, grouping,
the theory exponents, and small numeric helpers.

The per-run table is the only place these analyses touch the store. Its reads
(:meth:`gammadb.store.Store.finished_runs_with_loss_ends`, :meth:`~gammadb.store.Store.loss_aggregates`)
aggregate every per-step series in the database (over the rows up to the budget, or the stored run
summaries when the budget is each run's last step), so a sweep of millions of steps arrives as one
row per run.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import polars as pl

from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.metrics import LOSS, TEST_LOSS
from gammadb.records import RunStatus
from gammadb.runners.config import RunConfig

if TYPE_CHECKING:
    from gammadb.store import Store

#: The fraction of the steps up to the budget that the tail mean averages (as the run summaries do).
TAIL_FRACTION = 0.1


class Criterion(str, enum.Enum):
    """How one run's loss at the budget is measured (for eta*)."""

    final = "final"  # training loss at the last logged step <= budget
    tail_mean = "tail-mean"  # mean training loss over the last 10% of the steps up to the budget
    min = "min"  # smallest training loss at any step <= budget
    test = "test"  # test loss at the last test evaluation <= budget


@dataclasses.dataclass(frozen=True)
class RunTable:
    """One row per finished run of a sweep, with its loss aggregates at ``budget_step``.

    Columns: run_id, the group columns, gamma, eta, seed, diverged (NaN/inf at any step: such a run
    counts as infinitely bad), first_step, last_step (the last logged step <= budget), initial_loss,
    final_loss, tail_mean_loss, and where asked min_loss, max_loss (finite steps <= budget),
    test_loss. Aggregates are null for diverged runs. initial_loss and test_loss are on the training
    loss's scale: a logged test loss is divided by its run's ``stored_test_loss_scale``.
    """

    frame: pl.DataFrame
    budget_step: int
    source: str  # "summaries" (stored run summaries) or "sql" (GROUP BY over the steps)


def load_runs(store: "Store", sweep: str, *, budget: Optional[int] = None, want_min: bool = False,
              want_max: bool = False, want_test: bool = False, force_sql: bool = False) -> RunTable:
    """Read the per-run table of ``sweep`` at ``budget`` (default: the last step that every
    non-diverged run reached). Raises AnalysisError when the data cannot support it. Read once per
    page for the same arguments (:func:`gammadb.analysis.shared.shared_reads`: the report's claims,
    eta* and U-curve read the same table); the table is shared, so callers derive frames from it and
    never change it in place."""
    from gammadb.analysis.shared import shared_result

    return shared_result(store, ("load_runs", sweep, budget, want_min, want_max, want_test, force_sql),
                         lambda: _load_runs(store, sweep, budget=budget, want_min=want_min, want_max=want_max,
                                            want_test=want_test, force_sql=force_sql))


def _load_runs(store: "Store", sweep: str, *, budget: Optional[int], want_min: bool, want_max: bool,
               want_test: bool, force_sql: bool) -> RunTable:
    from gammadb.analysis.shared import shared_result, sweep_record

    sweep_record(store, sweep)  # NotFoundError with the known sweeps
    if store.metric_id(LOSS) is None:
        raise AnalysisError("the store has no training-loss series (metric 'loss'): nothing to analyse")
    # The initial loss is the reference for "trained" and "left the plateau". One minibatch's loss is
    # a noisy estimate of it (seen: 0.62 against a plateau at 0.99 with B = 32), so where the held-out
    # test loss was measured at the first step (f = 0 there, for every run) it is used, divided by the
    # run's test_loss_scale (``_with_initial_loss``).
    # read once per page (the phases' table, with the max loss, is another table of the same runs)
    runs = shared_result(store, ("finished_runs_with_loss_ends", sweep),
                         lambda: store.finished_runs_with_loss_ends(sweep))
    if runs.is_empty():
        raise AnalysisError(f"sweep {sweep!r} has no finished (completed or diverged) runs yet")
    runs = _cast_runs(_with_initial_loss(runs))
    runs = runs.with_columns(
        (pl.col("status").eq(RunStatus.DIVERGED.value) | pl.col("diverged_at").is_not_null()
         | pl.col("max_step").is_null() | ~_finite("initial_loss")
         # the stored summary saw a NaN/inf at some step (one written in place, with no diverged_at)
         | pl.col("s_diverged").cast(pl.Boolean).fill_null(False)).alias("diverged"),
    )
    ok = runs.filter(~pl.col("diverged"))
    if ok.is_empty():
        raise AnalysisError(
            f"every run of sweep {sweep!r} diverged ({runs.height} runs): no eta trained; "
            "rerun with smaller learning rates"
        )
    reach = int(ok["max_step"].min())
    if budget is None:
        budget = reach
    elif budget > reach:
        short = ok.filter(pl.col("max_step") < budget).sort("max_step")
        raise AnalysisError(
            f"budget step {budget} was not reached by {short.height} non-diverged run(s) (run "
            f"{short['run_id'][0]} stopped at step {short['max_step'][0]}); use --budget {reach} or less"
        )
    first = int(ok["first_step"].max())
    if budget <= first:
        raise AnalysisError(
            f"budget step {budget} is not after the first logged step ({first}) of every run: "
            f"use a budget between {first + 1} and {reach}"
        )

    ok_ids = ok["run_id"].to_list()
    dense = (pl.col("s_steps") == pl.col("s_final_step") - pl.col("first_step") + 1)
    # The stored summaries answer for a budget at every run's last step when every step was logged;
    # the largest loss only from summaries written since migration 0006 (s_max, null before).
    use_summaries = (
        not force_sql and not want_test
        and ok.select((pl.col("s_final_step").eq(budget) & pl.col("max_step").eq(budget)
                       & pl.col("s_final").is_not_null() & dense.fill_null(False)
                       & (pl.col("s_max").is_not_null() if want_max else pl.lit(True))).all()).item()
    )
    if use_summaries:
        # A summary's tail mean is null only when a NaN/inf is stored in its tail window (these runs
        # have logged steps): a divergence, as the SQL path's tail mean says, so it reads as NaN.
        agg = ok.select("run_id", pl.col("s_final_step").alias("last_step"), pl.col("s_final").alias("final_loss"),
                        pl.col("s_tail").fill_null(math.nan).alias("tail_mean_loss"), pl.col("s_min").alias("min_loss"),
                        *([pl.col("s_max").alias("max_loss")] if want_max else []))
        source = "summaries"
    else:
        agg = _sql_aggregates(store, ok, budget, want_min=want_min, want_max=want_max)
        source = "sql"
    if want_test:
        agg = agg.join(_test_values(store, ok_ids, budget), on="run_id", how="left")
    frame = (
        runs.drop("s_final_step", "s_steps", "s_final", "s_min", "s_max", "s_tail", "s_diverged", "max_step", "status",
                  "diverged_at")
        .join(agg, on="run_id", how="left")
    )
    if want_test:  # on the training loss's scale, so runs with different test reductions compare
        frame = frame.with_columns(pl.col("test_loss") / pl.col("test_loss_scale"))
    frame = frame.drop("test_loss_scale")
    # A non-finite aggregate of a run the runs table calls healthy (a NaN stored in place) is a
    # divergence all the same.
    checks = [c for c in ("final_loss", "tail_mean_loss", "min_loss", "max_loss") if c in frame.columns]
    frame = frame.with_columns(
        (pl.col("diverged") | pl.any_horizontal(*(_nonfinite(c) for c in checks))).alias("diverged"))
    frame = frame.with_columns(
        *(pl.when(pl.col("diverged")).then(None).otherwise(pl.col(c)).alias(c)
          for c in (*checks, "last_step", *(["test_loss"] if want_test else []))),
    )
    return RunTable(frame.sort("run_id"), int(budget), source)


def stored_test_loss_scale(config: Any) -> float:
    """TEST_LOSS / the training loss on the same points, for a run with this stored config (a dict or
    its JSON text): ``RunConfig.test_loss_scale`` (the number of outputs for MSE with the authors'
    summed test loss, else 1). A config that is not a RunConfig's (an imported run's: the file's
    columns, no 'task') gives 1: its test loss is taken as the file gave it.

    Only the fields the scale depends on are read (loss_fn, task, out_dim, test_reduction), so
    configs from newer gammadb versions with more fields still load. InvalidSpecError (ValueError for
    text that is not JSON) when they cannot be read.
    """
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict) or "task" not in config:
        return 1.0
    key = tuple(config.get(k) for k in _SCALE_FIELDS)
    if key not in _SCALES:
        try:
            cfg = RunConfig.from_dict({k: config[k] for k in _SCALE_FIELDS if k in config})
            _SCALES[key] = cfg.test_loss_scale
        except KeyError:  # a task this gammadb does not know
            raise InvalidSpecError(f"unknown task {config['task']!r} in a stored run config: "
                                   "is the store from a newer gammadb?") from None
    return _SCALES[key]


_SCALE_FIELDS = ("loss_fn", "task", "out_dim", "test_reduction")
_SCALES: dict[tuple, float] = {}


def _with_initial_loss(runs: pl.DataFrame) -> pl.DataFrame:
    """Columns initial_test (the test loss at the first step), initial_train (the first training
    loss) and config in; initial_loss and test_loss_scale out. The initial loss is the test loss on
    the training loss's scale where measured, else the first training loss."""
    try:
        scales = [stored_test_loss_scale(c) for c in runs["config"].to_list()]
    except (InvalidSpecError, ValueError, TypeError) as exc:  # TypeError: a list where a value belongs
        raise AnalysisError(f"a run of this sweep has a stored config that cannot be read: {exc}") from None
    return runs.with_columns(pl.Series("test_loss_scale", scales, dtype=pl.Float64)).with_columns(
        pl.coalesce(pl.col("initial_test").cast(pl.Float64) / pl.col("test_loss_scale"),
                    pl.col("initial_train").cast(pl.Float64)).alias("initial_loss"),
    ).drop("initial_test", "initial_train", "config")


def _cast_runs(runs: pl.DataFrame) -> pl.DataFrame:
    ints = ["run_id", "depth", "width", "batch_size", "seed", "diverged_at", "s_final_step", "s_steps",
            "first_step", "max_step"]
    floats = ["gamma", "eta", "s_final", "s_min", "s_max", "s_tail", "initial_loss"]
    strings = ["model", "dataset", "loss_fn", "optimizer", "status"]
    return runs.with_columns(
        *(pl.col(c).cast(pl.Int64) for c in ints),
        *(pl.col(c).cast(pl.Float64) for c in floats),
        *(pl.col(c).cast(pl.String) for c in strings),
    ).with_columns(pl.col("initial_loss").fill_null(math.nan))


def _finite(col: str) -> pl.Expr:
    return pl.col(col).is_not_null() & pl.col(col).is_finite()


def _nonfinite(col: str) -> pl.Expr:
    """A logged NaN/inf (a null is "not measured", not a divergence)."""
    return (pl.col(col).is_not_null() & ~pl.col(col).is_finite()).fill_null(False)


def tail_start(budget: int, first_step: int) -> int:
    """The tail window is the steps ``> tail_start`` and ``<= budget``: the last ceil(10%) of the
    steps from ``first_step`` to ``budget``, the same window the run summaries average when every
    step is logged."""
    n = budget - first_step + 1
    return budget - math.ceil(TAIL_FRACTION * n)


def _sql_aggregates(store: "Store", ok: pl.DataFrame, budget: int, *, want_min: bool,
                    want_max: bool) -> pl.DataFrame:
    """Per-run aggregates computed in the database (:meth:`gammadb.store.Store.loss_aggregates`),
    each run's tail window starting ``tail_start`` after its own first step; the tail mean and the
    NaN rules here."""
    parts = []
    for (first,), sub in ok.group_by(["first_step"]):
        parts.append(store.loss_aggregates(sub["run_id"].to_list(), budget, tail_after=tail_start(budget, int(first)),
                                           want_min=want_min, want_max=want_max))
    agg = pl.concat(parts, how="diagonal_relaxed")
    # SQLite stores NaN as NULL, so a NULL where a row exists is a logged NaN: keep it a NaN.
    out = agg.with_columns(
        pl.when(pl.col("tail_n") < pl.col("tail_rows")).then(math.nan)
        .otherwise(pl.col("tail_sum").cast(pl.Float64) / pl.col("tail_n")).alias("tail_mean_loss"),
        pl.when(pl.col("last_step").is_not_null())
        .then(pl.col("final_loss").cast(pl.Float64).fill_null(math.nan)).alias("final_loss"),
    )
    keep = ["run_id", "last_step", "final_loss", "tail_mean_loss"]
    extremes = [c for c, w in (("min_loss", want_min), ("max_loss", want_max)) if w]
    out = out.with_columns(*(pl.col(c).cast(pl.Float64) for c in extremes))
    keep += extremes
    return out.select(keep)


def _test_values(store: "Store", run_ids: Sequence[int], budget: int) -> pl.DataFrame:
    if store.metric_id(TEST_LOSS) is None:
        raise AnalysisError("this store has no test-loss series: use --criterion final, tail-mean or min")
    out = store.test_loss_at(run_ids, budget)
    if out["test_loss"].is_null().all():
        raise AnalysisError(f"no run of this sweep logged test_loss at or before step {budget}: "
                            "use --criterion final, tail-mean or min")
    return out


# ---------------------------------------------------------------------- theory
#: Models whose `depth` column is the L of the theory (weight layers; the CNN counts as 4).
_DEPTH_IS_L = {"mlp", "toy", "cnn", "unknown"}


def theory_exponent(target: str, regime: str, group: dict[str, Any]) -> Optional[float]:
    """The exponent docs/theory.md states for ``target`` (eta_star / eta_max) in ``regime``, or None.

    MSE: 2 at small gamma, 2/L at large gamma (L = depth). Cross-entropy: the divergence boundary
    (eta_max) goes as gamma^1 at small gamma; nothing is stated for its eta* or its large side.
    Only plain SGD is covered.
    """
    if group.get("optimizer") not in (None, "sgd"):
        return None
    loss = group.get("loss_fn")
    if loss in (None, "mse"):
        if regime == "small_gamma":
            return 2.0
        depth, model = group.get("depth"), group.get("model")
        if depth and model in _DEPTH_IS_L:
            return 2.0 / int(depth)
        return None
    if loss == "xent" and regime == "small_gamma" and target == "eta_max":
        return 1.0
    return None


def toy_eta_max(gamma: np.ndarray | float, depth: int) -> np.ndarray:
    """2 / lambda* of the width-1 deep linear toy model (docs/theory.md):
    lambda* = L (1 + gamma)^(2(L-1)/L) / gamma^2."""
    g = np.asarray(gamma, dtype=float)
    lam = depth * (1.0 + g) ** (2.0 * (depth - 1) / depth) / g**2
    return 2.0 / lam


# ---------------------------------------------------------------------- numerics
def percentile_ci(samples: np.ndarray, level: float = 0.95) -> Optional[tuple[float, float]]:
    """Percentile interval of the finite samples, or None when fewer than 10 are finite."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size < 10:
        return None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [a, 1.0 - a])
    return float(lo), float(hi)


def none_if_nan(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def check_fraction(name: str, value: float) -> None:
    if not (0.0 < value < 1.0) or not math.isfinite(value):
        raise InvalidSpecError(f"{name} must be a fraction between 0 and 1 (exclusive), got {value}")
