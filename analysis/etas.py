"""The eta families, defined once: per gamma, eta* (trains best), eta_max (largest that trains),
eta_stable (largest that does not diverge), eta_conv (the authors' largest convergent eta) and eta_min
(smallest that leaves the plateau), their thresholds, and the run families selected along them
(``--along`` / ``--family`` eta-star, eta-max).

``analyze optimal-lr`` (:mod:`gammadb.analysis.optimal_lr`) and the families of the curve analyses
(plateaus, collapse, the report) both call :func:`cell_stats` and :func:`select_etas` on the same
per-(gamma, eta, seed) matrices (:class:`EtaGrid`), so a family runs at the grid eta that optimal-lr
reports. Definitions (per group of comparable runs and gamma; seeds averaged; a cell with a diverged
seed is infinitely bad; "loss at the budget" is the tail-mean training loss):

- eta*: argmin over the grid of the seed-mean criterion, refined by a parabola in log10(eta) through
  the best point and its two neighbours (on the log of the loss when positive); the grid point itself
  at an edge of the grid or next to a diverged eta. A family takes the grid eta nearest (in log eta)
  to eta*, which is the best grid point: the vertex of a parabola through a strict minimum lies within
  half a grid step of it. Where etas tie exactly for the minimum (a noise-free model that reaches a
  loss of exactly 0 at several) the best grid point is the smallest of them, and the vertex may sit
  midway to the next: the family still takes the best grid point.
- eta_max: the largest eta where no seed diverged and loss at the budget <= ``CONVERGED`` x initial.
- eta_stable: the largest eta where no seed diverged.
- eta_conv: the largest convergent eta of the authors' scan, replayed on the stored etas
  (:func:`gammadb.runners.eta_scan.replay`): going down from the largest, the first eta with no
  diverged seed such that no smaller stored eta within ``decades_below`` decades of it (the scan's
  window; any distance for cross-entropy at gamma < 1) has a diverged seed. It does not depend on the
  order the runs were trained in. Below eta_stable when a divergence sits under a convergent eta.
- eta_min: the smallest eta where no seed diverged and loss at the budget < ``LEFT_PLATEAU`` x initial.

Families from a runs frame (the ``run_overview`` columns: status, tail_mean_loss, initial_loss, ...)
use the stored run summaries: the loss at each run's last step. ``analyze optimal-lr`` reads the same
aggregates at a common budget (by default the last step every non-diverged run reached, which is the
summaries' step when all runs have the same length) and takes the initial loss from the test loss at
the first step where one was logged; where those agree, so do the etas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import polars as pl

# the thresholds live in a light module (the CLI's option defaults); imported from here as well
from gammadb.analysis.thresholds import CONVERGED, LEFT_PLATEAU
from gammadb.errors import AnalysisError, InvalidSpecError
from gammadb.records import FINISHED, RUN_COLUMNS, RunStatus, same_value
from gammadb.runners.eta_scan import AUTHORS_DECADES_BELOW, replay, whole_grid
#: Losses within this relative distance of the best count as tied for eta* (``n_tied``).
TIE_RTOL = 1e-9
#: The run families: each gamma at its eta*, at its eta_max, at one fixed eta, or every run.
ALONG = ("eta_star", "eta_max", "fixed", "all")


# ---------------------------------------------------------------------------------------- per gamma
@dataclasses.dataclass(frozen=True)
class EtaGrid:
    """One (group, gamma): matrices over (eta, seed); NaN = no run."""

    etas: np.ndarray  # (E,) the grid etas as stored, ascending
    log_eta: np.ndarray  # (E,)
    value: np.ndarray  # (E, S) criterion, NaN where missing or diverged
    check: np.ndarray  # (E, S) loss at the budget (tail mean)
    initial: np.ndarray  # (E, S)
    diverged: np.ndarray  # (E, S) bool
    present: np.ndarray  # (E, S) bool


def eta_grid(cols: dict[str, np.ndarray]) -> EtaGrid:
    """The matrices of one (group, gamma) from its runs' columns (numpy arrays: eta, seed, diverged,
    value, tail_mean_loss, initial_loss)."""
    etas, ei = np.unique(cols["eta"], return_inverse=True)
    seeds, si = np.unique(cols["seed"], return_inverse=True)
    shape = (etas.size, seeds.size)

    def mat(values: np.ndarray) -> np.ndarray:
        m = np.full(shape, np.nan)
        m[ei, si] = values
        return m

    div = np.zeros(shape, bool)
    div[ei, si] = cols["diverged"]
    present = np.zeros(shape, bool)
    present[ei, si] = True
    return EtaGrid(etas, np.log10(etas), mat(cols["value"]), mat(cols["tail_mean_loss"]),
                   mat(cols["initial_loss"]), div, present)


def split_cells(runs: pl.DataFrame) -> Iterator[tuple[tuple[int, float], dict[str, np.ndarray]]]:
    """Yield ((group_idx, gamma), {column: numpy array}) per (group, gamma), in sorted order: one
    conversion to numpy for the whole table rather than a frame per cell. ``runs``: group_idx, gamma,
    eta, seed, diverged, value, tail_mean_loss, initial_loss, and loss_fn where present."""
    runs = runs.sort("group_idx", "gamma")
    cols = {
        "group_idx": runs["group_idx"].to_numpy(), "gamma": runs["gamma"].to_numpy(),
        "eta": runs["eta"].to_numpy(), "seed": runs["seed"].to_numpy(),
        "diverged": runs["diverged"].to_numpy().astype(bool),
        **{c: runs[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
           for c in ("value", "tail_mean_loss", "initial_loss")},
    }
    if "loss_fn" in runs.columns:
        cols["loss_fn"] = runs["loss_fn"].to_numpy()
    if runs.is_empty():
        return
    key_change = np.flatnonzero((np.diff(cols["group_idx"]) != 0) | (np.diff(cols["gamma"]) != 0)) + 1
    starts = np.concatenate([[0], key_change])
    ends = np.concatenate([key_change, [runs.height]])
    for a, b in zip(starts, ends):
        yield (int(cols["group_idx"][a]), float(cols["gamma"][a])), {k: v[a:b] for k, v in cols.items()}


def weighted_mean(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Mean over seeds of m (E, S) with seed weights w (B, S), ignoring NaN: (B, E)."""
    ok = np.isfinite(m)
    num = w @ np.where(ok, m, 0.0).T
    den = w @ ok.T.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def cell_stats(g: EtaGrid, w: np.ndarray, *, converged: float = CONVERGED,
               threshold: float = LEFT_PLATEAU) -> dict[str, np.ndarray]:
    """Seed-weighted cell statistics, each (B, E) for seed weights ``w`` (B, S): value (inf where a
    seed diverged), trained (eta_max's test), left (eta_min's), stable, tried, ratio, any_div."""
    any_div = (w @ g.diverged.T.astype(float)) > 0
    tried = (w @ g.present.T.astype(float)) > 0
    value = weighted_mean(w, np.where(g.diverged, np.nan, g.value))
    value = np.where(any_div, np.inf, value)
    check = weighted_mean(w, np.where(g.diverged, np.nan, g.check))
    init = weighted_mean(w, g.initial)
    ok = tried & ~any_div
    with np.errstate(invalid="ignore"):
        trained = ok & (check <= converged * init)
        left = ok & (check < threshold * init)
        ratio = check / init
    return dict(value=value, trained=trained, left=left, stable=ok, tried=tried, ratio=ratio, any_div=any_div)


def scan_whole_grid(cols: dict[str, np.ndarray], gamma: float) -> bool:
    """Whether the authors' scan of this (group, gamma) (its :func:`split_cells` columns) runs the
    whole eta grid: cross-entropy at gamma < 1."""
    loss = cols.get("loss_fn")
    return loss is not None and loss.size > 0 and whole_grid(loss[0], gamma)


def convergent_indices(g: EtaGrid, any_div: np.ndarray, tried: np.ndarray, *,
                       decades_below: float = AUTHORS_DECADES_BELOW, whole: bool = False) -> np.ndarray:
    """eta_conv per row of (B, E) masks (a seed diverged; some seed ran): the grid index of the
    authors' largest convergent eta (:func:`gammadb.runners.eta_scan.replay` over the etas tried),
    -1 where there is none. Rows are replayed once per distinct pattern (bootstrap rows repeat)."""
    div, ran = np.atleast_2d(any_div).astype(bool), np.atleast_2d(tried).astype(bool)
    rows = np.concatenate([div, ran], axis=1)
    # distinct rows found on their bits packed into one opaque key each: a 1-d sort of short keys is
    # ~100x faster than np.unique(axis=0) on the rows (a bootstrap's 1,000 rows, once per gamma)
    packed = np.ascontiguousarray(np.packbits(rows, axis=1))
    keys = (packed.view(np.dtype((np.void, packed.shape[1]))).ravel() if packed.shape[1]
            else np.zeros(rows.shape[0], dtype=np.int8))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    patterns = rows[first]
    e = g.etas.size
    found = np.full(len(patterns), -1, dtype=np.int64)
    for k, row in enumerate(patterns):
        eta = replay([(float(g.etas[i]), bool(row[i])) for i in range(e) if row[e + i]], decades_below, whole)
        if eta is not None:
            found[k] = int(np.flatnonzero(g.etas == eta)[0])
    return found[np.ravel(inverse)]


def extreme_eta(mask: np.ndarray, log_eta: np.ndarray, top: bool) -> np.ndarray:
    """Per row, the largest (top) or smallest log eta where ``mask``; NaN where none."""
    x = np.where(mask, log_eta[None, :], -np.inf if top else np.inf)
    r = x.max(axis=1) if top else x.min(axis=1)
    return np.where(np.isfinite(r), r, np.nan)


def ties(values: np.ndarray, rtol: float = TIE_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (B, E) (inf = diverged, NaN = not measured): the best finite value
    (inf when none) and the mask of the finite values within ``rtol`` of it."""
    score = np.where(np.isnan(values), np.inf, values)
    best = score.min(axis=1)
    with np.errstate(invalid="ignore"):
        tied = np.isfinite(score) & (score <= (best + rtol * np.abs(best))[:, None])
    return best, tied


def refine_argmin(log_eta: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``values`` (B, E) over the grid ``log_eta`` (E,): the refined log10 eta of the
    minimum, the grid index of the best point (-1 when every value is inf/NaN), and whether that
    point is at an edge of the grid. inf = diverged, NaN = not measured."""
    v = np.atleast_2d(values)
    b, e = v.shape
    score = np.where(np.isnan(v), np.inf, v)
    idx = np.argmin(score, axis=1)
    rows = np.arange(b)
    none = ~np.isfinite(score[rows, idx])
    est = log_eta[idx].astype(float)
    edge = (idx == 0) | (idx == e - 1)
    inner = ~none & ~edge
    if inner.any():
        i = idx[inner]
        r = rows[inner]
        xl, xc, xr = log_eta[i - 1], log_eta[i], log_eta[i + 1]
        yl, yc, yr = v[r, i - 1], v[r, i], v[r, i + 1]
        finite = np.isfinite(yl) & np.isfinite(yr)
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = finite & (yl > 0) & (yc > 0) & (yr > 0)
            yl, yc, yr = (np.where(pos, np.log(np.where(pos, y, 1.0)), y) for y in (yl, yc, yr))
            den = (xl - xc) * (xl - xr) * (xc - xr)
            a = (xr * (yc - yl) + xc * (yl - yr) + xl * (yr - yc)) / den
            bb = (xr**2 * (yl - yc) + xc**2 * (yr - yl) + xl**2 * (yc - yr)) / den
            vertex = np.clip(-bb / (2 * a), xl, xr)
        good = finite & (a > 0) & np.isfinite(vertex)
        est[inner] = np.where(good, vertex, xc)
    est[none] = np.nan
    idx = np.where(none, -1, idx)
    return est, idx, edge & ~none


@dataclasses.dataclass(frozen=True)
class GammaEtas:
    """The etas of one (group, gamma); indices into the grid, -1 where there is none."""

    log_eta_star: float  # refined; NaN when every eta diverged
    star_index: int  # the best grid point (the smallest of exactly tied ones)
    star_edge: bool  # the best grid point is the smallest or largest eta tried
    nearest_index: int  # the grid eta nearest eta* (what a family runs at)
    loss_at_eta_star: float  # the best seed-mean criterion (NaN when none)
    n_tied: int
    max_index: int
    stable_index: int
    min_index: int
    conv_index: int  # eta_conv, the authors' largest convergent eta


def _index(mask: np.ndarray, top: bool) -> int:
    hits = np.flatnonzero(mask)
    return int(hits[-1] if top else hits[0]) if hits.size else -1


def nearest_grid_index(log_eta: np.ndarray, log_star: float, best_index: int) -> int:
    """The index of the grid eta nearest ``log_star`` (-1 when ``best_index`` is): the best grid point
    unless another is nearer by more than rounding (see the module docstring)."""
    if best_index < 0:
        return -1
    d = np.abs(log_eta - log_star)
    near = int(np.argmin(d))
    return best_index if d[best_index] <= d[near] + 1e-9 else near


def select_etas(g: EtaGrid, st: dict[str, np.ndarray], *, decades_below: float = AUTHORS_DECADES_BELOW,
                whole: bool = False) -> GammaEtas:
    """eta*, eta_max, eta_stable, eta_conv and eta_min of one (group, gamma) from its unweighted
    :func:`cell_stats` (each (E,)); ``decades_below`` and ``whole`` set eta_conv's scan window."""
    star, idx, edge = refine_argmin(g.log_eta, st["value"][None, :])
    best, tied = ties(st["value"][None, :])
    i = int(idx[0])
    nearest = nearest_grid_index(g.log_eta, float(star[0]), i)
    return GammaEtas(
        log_eta_star=float(star[0]), star_index=i, star_edge=bool(edge[0]), nearest_index=nearest,
        loss_at_eta_star=float(best[0]) if i >= 0 else float("nan"), n_tied=int(tied[0].sum()),
        max_index=_index(st["trained"], top=True), stable_index=_index(st["stable"], top=True),
        min_index=_index(st["left"], top=False),
        conv_index=int(convergent_indices(g, st["any_div"], st["tried"], decades_below=decades_below,
                                          whole=whole)[0]),
    )


# ---------------------------------------------------------------------------------------- frames
def group_columns(runs: pl.DataFrame) -> list[str]:
    """The run columns that define comparable groups (everything but gamma, eta, seed)."""
    return [c for c in RUN_COLUMNS if c in runs.columns]


def varying_columns(runs: pl.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if runs[c].n_unique() > 1]


def _finite(col: str) -> pl.Expr:
    return pl.col(col).is_not_null() & pl.col(col).is_finite()


def _cells_frame(runs: pl.DataFrame, keys: Sequence[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(groups, cells) of a runs frame: the finished runs with group_idx, value and tail_mean_loss
    (the tail-mean loss), initial_loss and diverged as :func:`split_cells` wants them. A run is
    diverged when its status says so, when it records a divergence step, or when its tail loss or
    initial loss is missing or not finite (as ``analyze optimal-lr`` reads them)."""
    fin = runs.filter(pl.col("status").is_in(FINISHED)) if "status" in runs.columns else runs
    div = ~_finite("tail_mean_loss")
    if "status" in fin.columns:
        div = div | (pl.col("status") == RunStatus.DIVERGED.value)
    if "diverged_at" in fin.columns:
        div = div | pl.col("diverged_at").is_not_null()
    if "initial_loss" in fin.columns:
        div = div | ~_finite("initial_loss")
    initial = pl.col("initial_loss") if "initial_loss" in fin.columns else pl.lit(None, pl.Float64)
    cells = fin.with_columns(div.fill_null(True).alias("diverged"), pl.col("tail_mean_loss").alias("value"),
                             initial.cast(pl.Float64).alias("initial_loss"))
    if keys:
        groups = fin.select(keys).unique(maintain_order=True).with_row_index("group_idx").with_columns(
            pl.col("group_idx").cast(pl.Int64))
        cells = cells.join(groups, on=list(keys), how="left", nulls_equal=True)
    else:
        groups = pl.DataFrame({"group_idx": [0]}, schema={"group_idx": pl.Int64})
        cells = cells.with_columns(pl.lit(0, pl.Int64).alias("group_idx"))
    loss_fn = ["loss_fn"] if "loss_fn" in cells.columns else []
    return groups, cells.select("group_idx", "gamma", "eta", "seed", "diverged", "value", "tail_mean_loss",
                                "initial_loss", *loss_fn)


FAMILY_SCHEMA = {"gamma": pl.Float64, "eta_star": pl.Float64, "eta_star_refined": pl.Float64,
                 "loss_at_eta_star": pl.Float64, "n_tied": pl.UInt32, "eta_max": pl.Float64,
                 "eta_stable": pl.Float64, "eta_conv": pl.Float64, "eta_min": pl.Float64}


def family_etas(runs: pl.DataFrame, keys: Sequence[str], *, converged: float = CONVERGED,
                threshold: float = LEFT_PLATEAU, decades_below: float = AUTHORS_DECADES_BELOW) -> pl.DataFrame:
    """Per (keys, gamma) of a runs frame: eta_star (the grid eta nearest eta*; null when every eta
    diverged), eta_star_refined, loss_at_eta_star, n_tied (etas tied for the best loss), eta_max,
    eta_stable, eta_conv (scan window ``decades_below``), eta_min (grid etas as stored; null where
    none). Unfinished runs are left out."""
    groups, cells = _cells_frame(runs, keys)
    rows: list[dict[str, Any]] = []
    for (gi, gamma), sub in split_cells(cells):
        g = eta_grid(sub)
        st = {k: v[0] for k, v in cell_stats(g, np.ones((1, g.present.shape[1])), converged=converged,
                                             threshold=threshold).items()}
        e = select_etas(g, st, decades_below=decades_below, whole=scan_whole_grid(sub, gamma))

        def at(i: int) -> Optional[float]:
            return float(g.etas[i]) if i >= 0 else None

        rows.append(dict(group_idx=gi, gamma=gamma, eta_star=at(e.nearest_index),
                         eta_star_refined=float(10 ** e.log_eta_star) if e.star_index >= 0 else None,
                         loss_at_eta_star=e.loss_at_eta_star if e.star_index >= 0 else None,
                         n_tied=e.n_tied, eta_max=at(e.max_index), eta_stable=at(e.stable_index),
                         eta_conv=at(e.conv_index), eta_min=at(e.min_index)))
    out = pl.DataFrame(rows, schema={"group_idx": pl.Int64, **FAMILY_SCHEMA})
    return groups.join(out, on="group_idx", how="inner").drop("group_idx").sort(*keys, "gamma")


def eta_star_table(runs: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per (keys, gamma): eta_star (the grid eta a family runs at, see :func:`family_etas`),
    loss_at_eta_star and n_tied; gammas where every eta diverged are left out."""
    return family_etas(runs, keys).filter(pl.col("eta_star").is_not_null()).select(
        *keys, "gamma", "eta_star", "loss_at_eta_star", "n_tied")


def eta_max_table(runs: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per (keys, gamma): eta_max, the largest grid eta at which no seed diverged and the seed-mean
    tail loss is at most ``CONVERGED`` of the seed-mean initial loss; gammas without one left out."""
    return family_etas(runs, keys).filter(pl.col("eta_max").is_not_null()).select(*keys, "gamma", "eta_max")


def select_family(runs: pl.DataFrame, along: str, eta: Optional[float], keys: Sequence[str]) -> pl.DataFrame:
    """The runs of a family: ``eta_star`` (each gamma at its eta*), ``eta_max`` (each gamma at the
    largest eta that trained), ``fixed`` (one eta: ``eta``, or the eta at which the most gammas
    completed without diverging, ties to the lower mean tail loss), or ``all``."""
    if along not in ALONG:
        raise InvalidSpecError(f"unknown family {along!r}: use one of {', '.join(ALONG)}")
    if along == "all" or runs.is_empty():
        return runs
    if along == "fixed":
        if eta is None:  # the eta at which the most gammas finished without diverging; then the lower loss
            done = runs.filter(pl.col("status") == RunStatus.COMPLETED.value) if "status" in runs.columns else runs
            pool = done if not done.is_empty() else runs
            loss = pl.col("tail_mean_loss").mean() if "tail_mean_loss" in pool.columns else pl.lit(0.0)
            counts = (pool.group_by("eta").agg(pl.col("gamma").n_unique().alias("k"), pl.len().alias("n"),
                                               loss.alias("loss"))
                      .sort(["k", "n", "loss", "eta"], descending=[True, True, False, True], nulls_last=True))
            eta = float(counts["eta"][0])
        etas = sorted(runs["eta"].unique().to_list())
        near = [e for e in etas if same_value(e, eta)]
        if not near:
            shown = ", ".join(f"{e:g}" for e in etas[:12])
            raise InvalidSpecError(f"no run at eta = {eta:g} (etas: {shown})")
        return runs.filter(pl.col("eta") == float(near[0]))
    fam = family_etas(runs, keys)
    if along == "eta_max":
        star = fam.filter(pl.col("eta_max").is_not_null()).rename({"eta_max": "eta"})
        if star.is_empty():
            raise AnalysisError(f"no eta_max at any gamma: no (gamma, eta) reached a tail loss of at most "
                                f"{CONVERGED:g} x its initial loss without a diverged seed")
    else:
        star = fam.filter(pl.col("eta_star").is_not_null()).rename({"eta_star": "eta"})
        if star.is_empty():
            raise AnalysisError("no eta* at any gamma: every (gamma, eta) diverged or is unfinished")
    return runs.join(star.select(*keys, "gamma", "eta"), on=[*keys, "gamma", "eta"], how="semi", nulls_equal=True)
