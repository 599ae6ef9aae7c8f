"""Benchmark: the paper's first result reproduced on a CPU, the `reproduce` preset (docs/reproduce.md).

Trains ``gammadb run --preset reproduce`` (MLPs of depth L = 2, 3, 4) into a store, then prints, per
depth, the exponent of eta* against gamma on each side of gamma = 1 with its bootstrap interval, beside
the theory (2 for gamma << 1, 2/L for gamma >> 1; docs/theory.md claim 1), the interval's width and
pass / fail against the targets: within 0.15 of the theory, an interval at most 0.3 wide, the whole
run within 15 minutes. The analysis is exactly ``gammadb analyze optimal-lr --sweep reproduce`` (its
default settings), also read at half the budget so the reader sees how far the exponents move with it.

Then the toy model of docs/theory.md (``--preset toy``, the width-1 deep linear net whose edge of
stability has a closed form): per depth, the measured eta_max against 2 / lambda* at every gamma and the
fitted exponents against the closed form's on the same gammas.

Every figure printed is measured in this invocation; nothing is hard-coded but the targets.

    python benchmarks/reproduce.py                               # a temporary SQLite store
    python benchmarks/reproduce.py --url sqlite:///repro.sqlite  # keep it: gammadb analyze ... --url ...
    python benchmarks/reproduce.py --skip-toy                    # the MLPs only

Exit status 0 when every target is met, 1 otherwise. Runs already in a given store are skipped (the
wall time then covers only what was left to train).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import polars as pl

TOLERANCE = 0.15  # |measured - theory| (docs/theory.md: slopes read from half-decade grids)
MAX_WIDTH = 0.3  # of each bootstrap interval
MAX_SECONDS = 15 * 60  # the MLP sweep, on a laptop-class CPU
REGIMES = (("small_gamma", "gamma << 1"), ("large_gamma", "gamma >> 1"))


def train(url: str, name: str, device: str, ensemble: Optional[int] = None) -> tuple[float, str]:
    """Run preset ``name`` into ``url``; (wall seconds, the run's summary line)."""
    from gammadb.runners.launch import LaunchOptions, launch
    from gammadb.runners.presets import preset

    spec = preset(name)
    opts = LaunchOptions(device=device, ensemble=spec.ensemble if ensemble is None else ensemble,
                         progress=False, quiet=True)
    t0 = time.perf_counter()
    summary = launch(url, spec, opts)
    return time.perf_counter() - t0, summary.splitlines()[0]


def eta_star_exponents(result: Any) -> list[dict[str, Any]]:
    """Per depth and regime: the eta* power law of an optimal_lr result with the pass / fail flags."""
    rows = []
    fits = result.fits.filter(pl.col("target") == "eta_star").sort("depth")
    for depth in fits["depth"].unique().sort():
        for regime, label in REGIMES:
            f = fits.filter((pl.col("depth") == depth) & (pl.col("regime") == regime)).row(0, named=True)
            k, lo, hi, theory = f["exponent"], f["exponent_lo"], f["exponent_hi"], f["theory_exponent"]
            width = hi - lo if lo is not None and hi is not None else None
            rows.append(dict(
                depth=int(depth), regime=label, theory=theory, exponent=k, lo=lo, hi=hi, width=width,
                gammas=(f["gamma_lo"], f["gamma_hi"]), n=f["n_points"], reason=f["reason"],
                close=k is not None and abs(k - theory) <= TOLERANCE,
                narrow=width is not None and width <= MAX_WIDTH,
            ))
    return rows


def toy_check(result: Any) -> list[dict[str, Any]]:
    """Per depth and regime of the toy sweep: eta_max's fitted exponent beside the closed form's (2 /
    lambda* fitted on the same gammas) and the theory; and how far each gamma's eta_max sits from
    2 / lambda*, in decades (within one grid step: eta_max is read off the grid, and a rate a little
    above the edge can still end below 0.1 x the initial loss while its oscillation grows)."""
    from gammadb.analysis._common import toy_eta_max
    from gammadb.analysis.fits import power_law

    rows = []
    for depth in result.points["depth"].unique().sort():
        pts = result.points.filter(pl.col("depth") == depth).sort("gamma")
        etas = result.cells.filter(pl.col("depth") == depth)["eta"].unique().sort().to_numpy()
        step = float(np.median(np.diff(np.log10(etas)))) if etas.size > 1 else math.nan
        ok = pts.filter(pl.col("eta_max").is_not_null() & ~pl.col("eta_max_censored"))
        gaps = np.log10(toy_eta_max(ok["gamma"].to_numpy(), int(depth)) / ok["eta_max"].to_numpy())
        for regime, label in REGIMES:
            f = result.fits.filter((pl.col("depth") == depth) & (pl.col("target") == "eta_max")
                                   & (pl.col("regime") == regime)).row(0, named=True)
            used = ok.filter(pl.col("gamma").is_between(f["gamma_lo"], f["gamma_hi"])) if f["gamma_lo"] else ok.clear()
            g = used["gamma"].to_numpy()
            closed = power_law(g, toy_eta_max(g, int(depth)), n_boot=10).exponent if g.size >= 3 else None
            rows.append(dict(
                depth=int(depth), regime=label, theory=f["theory_exponent"], exponent=f["exponent"],
                closed_form=closed, n=f["n_points"],
                agrees=f["exponent"] is not None and closed is not None and abs(f["exponent"] - closed) <= TOLERANCE,
            ))
        rows[-1]["gap_range"] = rows[-2]["gap_range"] = (float(gaps.min()), float(gaps.max())) if gaps.size else None
        rows[-1]["grid_step"] = rows[-2]["grid_step"] = step
        rows[-1]["n_gammas"] = rows[-2]["n_gammas"] = int(gaps.size)
    return rows


def _num(x: Optional[float], fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def print_exponents(rows: list[dict[str, Any]], half: list[dict[str, Any]], budget: int) -> bool:
    print(f"{'L':>2} {'regime':11} {'theory':>6} {'measured':>8} {'interval':>16} {'width':>6} {'|diff|':>6} "
          f"{'gammas':>17} {'n':>2}  {'at T/2':>7}  verdict")
    ok = True
    halves = {(h["depth"], h["regime"]): h for h in half}
    for r in rows:
        diff = abs(r["exponent"] - r["theory"]) if r["exponent"] is not None else None
        verdict = "pass" if r["close"] and r["narrow"] else "FAIL"
        if verdict == "FAIL":
            why = []
            if not r["close"]:
                why.append(f"not within {TOLERANCE}" if r["exponent"] is not None else f"no fit: {r['reason']}")
            if r["exponent"] is not None and not r["narrow"]:
                why.append(f"interval wider than {MAX_WIDTH}")
            verdict += " (" + "; ".join(why) + ")"
        ok &= verdict == "pass"
        iv = f"[{_num(r['lo'])}, {_num(r['hi'])}]"
        gam = f"{r['gammas'][0]:.3g}..{r['gammas'][1]:.3g}" if r["gammas"][0] is not None else "-"
        h = halves.get((r["depth"], r["regime"]), {})
        print(f"{r['depth']:>2} {r['regime']:11} {r['theory']:6.3f} {_num(r['exponent']):>8} {iv:>16} "
              f"{_num(r['width']):>6} {_num(diff):>6} {gam:>17} {r['n']:>2}  {_num(h.get('exponent')):>7}  {verdict}")
    print(f"(at T/2: the same fit with the runs read at step {budget // 2} instead of {budget}: how far the "
          "exponent moves with the budget)")
    return ok


def print_toy(rows: list[dict[str, Any]]) -> bool:
    print(f"{'L':>2} {'regime':11} {'theory':>6} {'closed form':>11} {'measured':>8}  verdict")
    ok = True
    for r in rows:
        verdict = "pass" if r["agrees"] else f"FAIL (measured not within {TOLERANCE} of the closed form)"
        ok &= r["agrees"]
        print(f"{r['depth']:>2} {r['regime']:11} {r['theory']:6.3f} {_num(r['closed_form']):>11} "
              f"{_num(r['exponent']):>8}  {verdict}")
    for r in rows[1::2]:
        gaps = r["gap_range"]
        inside = gaps is not None and max(abs(gaps[0]), abs(gaps[1])) <= r["grid_step"] + 1e-6
        ok &= inside
        print(f"L={r['depth']}: log10(2/lambda* / eta_max) over {r['n_gammas']} gammas in "
              f"[{_num(gaps[0] if gaps else None)}, {_num(gaps[1] if gaps else None)}] decades: "
              + (f"pass (within one grid step, {r['grid_step']:.3f})" if inside
                 else f"FAIL (more than one grid step, {r['grid_step']:.3f}, from 2/lambda*)"))
    return ok


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="store URL (default: a SQLite file in a temporary directory)")
    ap.add_argument("--device", default="cpu", help="cpu (the target), or auto / cuda")
    ap.add_argument("--skip-toy", action="store_true", help="leave out the toy model's closed-form check")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gammadb-reproduce-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'reproduce.sqlite'}"
        return _run(url, args.device, args.skip_toy)


def _run(url: str, device: str, skip_toy: bool) -> int:
    from gammadb.analysis import optimal_lr
    from gammadb.runners.presets import preset
    from gammadb.store import Store

    spec = preset("reproduce")
    print(f"preset reproduce: {spec.description}")
    print(f"store: {url}")
    seconds, line = train(url, "reproduce", device)
    print(f"{line}; wall time {seconds:.0f} s ({seconds / 60:.1f} min)")
    t0 = time.perf_counter()
    with Store.open(url) as store:
        full = optimal_lr.analyze(store, "reproduce")
        half = optimal_lr.analyze(store, "reproduce", budget=spec.steps // 2)
    print(f"analysis (gammadb analyze optimal-lr --sweep reproduce): {time.perf_counter() - t0:.0f} s\n")
    print(f"eta* ~ gamma^k, per depth (claim 1; targets: |k - theory| <= {TOLERANCE}, interval width <= {MAX_WIDTH}):")
    ok = print_exponents(eta_star_exponents(full), eta_star_exponents(half), full.budget_step)
    in_time = seconds <= MAX_SECONDS
    print(f"wall time of the sweep: {seconds:.0f} s, target <= {MAX_SECONDS} s: {'pass' if in_time else 'FAIL'}")
    ok &= in_time
    if not skip_toy:
        toy_seconds, line = train(url, "toy", device, ensemble=32)
        print(f"\ntoy model (docs/theory.md#toy-model; --preset toy, ensembles of 32): {line}; "
              f"wall time {toy_seconds:.0f} s")
        with Store.open(url) as store:
            toy = optimal_lr.analyze(store, "toy")
        print("eta_max ~ gamma^k against the closed form 2/lambda* = 2 gamma^2 / (L (1 + gamma)^(2(L-1)/L)):")
        ok &= print_toy(toy_check(toy))
    print("\nall targets met" if ok else "\nsome targets missed (see FAIL above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
