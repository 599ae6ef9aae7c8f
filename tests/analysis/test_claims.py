"""`gammadb.analysis.claims` and `gammadb analyze claims`: the paper's claims held against a sweep.

Synthetic sweeps with known behaviour go through `gammadb import` into a real store (SQLite and, with
GAMMADB_TEST_PG_URL, PostgreSQL): loss curves that sit on a plateau and drop at tau = eta t / s(gamma)
~ const (s = gamma at gamma >= 1, so they collapse in tau and the plateau along eta* lasts
~ gamma^(1 - 2/L)), whose loss at the budget is lowest at eta* = law(gamma), diverged (inf from
mid-run) above 4 eta*, and whose best loss over eta is lowest near gamma = 10.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from gammadb.analysis.claims import ClaimsReport, Verdict, best_gamma_interval, verdict, within
from gammadb.cli import app
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.conftest import BACKENDS, _pg_database

GAMMAS = [10.0**k for k in (-3, -2.5, -2, -1.5, -1, 0, 1, 1.5, 2, 2.5, 3)]
KEYS = ["a", "b", "c-small", "c-large", "d", "e", "f"]
runner = CliRunner()


def law(gamma: float, depth: int = 3) -> float:
    """eta* of the theory, with a sharp knee: gamma^2 below 1, gamma^(2/L) above."""
    return 0.5 * min(gamma**2, gamma ** (2 / depth))


def linear_law(gamma: float, depth: int = 3) -> float:
    """A sweep that breaks claim 1 at small gamma: eta* ~ gamma^1 there."""
    return 0.5 * min(gamma, gamma ** (2 / depth))


def claims_sweep(gammas: list[float], eta_star: Callable[[float, int], float] = law, seeds: tuple[int, ...] = (0, 1, 2),
                 depth: int = 3, steps: int = 3000, tau0: float = 20.0, per_decade: int = 4) -> pl.DataFrame:
    """Curves logged on a log grid of steps (30 a decade) plus step 0. Per (gamma, eta, seed):
    loss = q + (1 - q) / (1 + x^4), x = eta t / (s(gamma) tau0) with s = eta*(gamma) below gamma = 1 and
    gamma / 2 above (continuous at 1); the floor q = q0(gamma) (1 + 4 d^2), d = log10(eta / eta*_seed),
    with q0 lowest at gamma = 10; 2% multiplicative noise; inf from step T/2 when eta > 4 eta*_seed.
    Etas on a global grid of ``per_decade`` a decade, from 1.25 decades below eta* to 0.75 above."""
    t = np.unique(np.concatenate([[0], np.round(np.logspace(0, math.log10(steps), 30 * int(math.log10(steps)) + 1))]))
    t = t.astype(np.int64)
    frames = []
    for g in gammas:
        es = eta_star(g, depth)
        s_g = es if g < 1 else 0.5 * g
        q0 = 0.01 * (1 + (math.log10(g) - 1) ** 2 / 8)
        for j in range(math.floor((math.log10(es) - 1.25) * per_decade), math.ceil((math.log10(es) + 0.75) * per_decade) + 1):
            eta = 10 ** (j / per_decade)
            for s in seeds:
                es_s = es * 10 ** (0.01 * (s - 1))
                q = q0 * (1 + 4 * math.log10(eta / es_s) ** 2)
                loss = q + (1 - q) / (1 + (eta * t / (s_g * tau0)) ** 4)
                rng = np.random.default_rng([j + 1000, s, int(round(100 * math.log10(g))) + 1000])
                loss = loss * (1 + 0.02 * rng.normal(size=t.size))
                loss[0] = 1.0
                if eta > 4 * es_s:
                    loss[t >= steps // 2] = np.inf
                frames.append(pl.DataFrame({"gamma": g, "eta": eta, "seed": s, "step": t, "loss": loss,
                                            "depth": depth, "model": "mlp"}))
    return pl.concat(frames)


SWEEPS = {
    "holds": lambda: claims_sweep(GAMMAS),
    "linear": lambda: claims_sweep(GAMMAS[:5], eta_star=linear_law, seeds=(0, 1)),
    "few": lambda: claims_sweep([1e-2, 1.0, 100.0], seeds=(0, 1)),
    "depths": lambda: pl.concat([claims_sweep([0.1, 1.0, 10.0], seeds=(0,), depth=d, steps=300) for d in (2, 4)]),
}


@pytest.fixture(scope="module", params=BACKENDS)
def claims_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    """One store per backend holding the synthetic sweeps (read-only tests)."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('claims') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    url = next(urls)
    store = Store.open(url)
    for name, make in SWEEPS.items():
        import_frame(store, make(), name)
    try:
        yield store, url
    finally:
        store.close()
        next(urls, None)


def rows_of(rep: ClaimsReport) -> dict[str, dict]:
    return {r.key: r.to_json() for r in rep.rows}


# ---------------------------------------------------------------------- verdicts
def test_a_sweep_where_the_claims_hold_is_consistent_on_every_claim(claims_store: tuple[Store, str]) -> None:
    rep = verdict(claims_store[0], "holds", n_boot=200)
    assert [r.key for r in rep.rows] == KEYS and rep.budget_step == 3000
    rows = rows_of(rep)
    assert {k: r["verdict"] for k, r in rows.items()} == {k: "consistent" for k in KEYS}, rows
    want = {"a": (2.0, 2.0), "b": (2 / 3, 2 / 3), "c-small": (2.0, 2.0), "c-large": (2 / 3, 2 / 3),
            "d": (1 / 3, 1 / 3), "e": (-1.0, -1.0)}
    for key, (theory, measured) in want.items():
        assert rows[key]["theory"] == pytest.approx(theory), key
        tol = 0.05 if key in ("a", "b", "c-small", "e") else 0.1
        assert rows[key]["measured"] == pytest.approx(measured, abs=tol), (key, rows[key])
        lo, hi = rows[key]["interval"]
        assert lo <= rows[key]["measured"] <= hi
    assert rows["b"]["theory_text"] == "2/L = 0.667" and rows["d"]["theory_text"] == "1 - 2/L = 0.333"
    # collapse: the RMS distance falls tenfold once time is rescaled by tau
    assert "RMS distance 0.5" in rows["e"]["note"] and "-> 0.05" in rows["e"]["note"]
    # the best loss over eta is lowest near gamma = 10 (the floor q0 is lowest there)
    assert rows["f"]["theory"] == 1.0 and 3.0 <= rows["f"]["measured"] <= 100.0
    assert rows["f"]["interval"][0] >= 1.0
    assert all(r["run"] is None for r in rows.values())


def test_rows_c_can_fit_the_authors_largest_convergent_eta(claims_store: tuple[Store, str]) -> None:
    """largest="eta_conv": rows (c) fit the authors' scan value (here, with no divergence below a
    convergent eta, eta_stable), and name it; an unknown target is refused."""
    from gammadb.errors import InvalidSpecError

    rows = rows_of(verdict(claims_store[0], "holds", n_boot=50, largest="eta_conv"))
    assert rows["c-small"]["claim"] == "eta_conv ~ gamma^2, gamma << 1"
    assert rows["c-small"]["verdict"] == rows["c-large"]["verdict"] == "consistent", rows
    assert rows["c-small"]["measured"] == pytest.approx(2.0, abs=0.15)
    assert rows["c-large"]["measured"] == pytest.approx(2 / 3, abs=0.15)
    with pytest.raises(InvalidSpecError, match="largest must be eta_max or eta_conv"):
        verdict(claims_store[0], "holds", largest="eta_min")


def test_eta_star_linear_in_gamma_is_inconsistent_with_claim_1(claims_store: tuple[Store, str]) -> None:
    rows = rows_of(verdict(claims_store[0], "linear", n_boot=200))
    for key in ("a", "c-small"):
        assert rows[key]["verdict"] == "inconsistent", rows[key]
        assert rows[key]["theory"] == 2.0 and rows[key]["measured"] == pytest.approx(1.0, abs=0.05)
        assert rows[key]["interval"][1] + 0.15 < 2.0
    # no gamma >= 10 in this sweep: the large-gamma claims cannot be judged here
    assert rows["b"]["verdict"] == "not testable here" and "gamma >= 10" in rows["b"]["note"]


def test_too_few_gammas_is_not_testable_with_a_command_that_fixes_it(claims_store: tuple[Store, str],
                                                                     tmp_path: Path) -> None:
    rows = rows_of(verdict(claims_store[0], "few", n_boot=200))
    for key in ("a", "b", "c-small", "c-large", "d", "e"):
        assert rows[key]["verdict"] == "not testable here", rows[key]
        assert rows[key]["measured"] is None and rows[key]["interval"] is None
        assert rows[key]["run"].startswith("gammadb run --preset quick --name few-claims --depth 3 "), rows[key]
    assert "(need >= 3) in gamma <= 0.1" in rows["a"]["note"]
    assert "a power law needs at least 3" in rows["d"]["note"]
    assert "a power law needs 3" in rows["e"]["note"]
    # two decades of half-decade gammas on the small side, etas following eta* ~ gamma^2 down, 3 seeds
    assert rows["a"]["run"] == ("gammadb run --preset quick --name few-claims --depth 3 --gamma 1e-3:1e2:11 "
                                "--eta 1e-8:1e2:31 --seeds 3 --steps 3000")
    assert "--gamma 1e-2:1e3:11" in rows["b"]["run"]
    assert rows["f"]["verdict"] == "consistent" and rows["f"]["measured"] == 100.0
    # the command is a valid `gammadb run`: its dry run plans 11 gammas x 31 etas x 3 seeds
    out = tmp_path / "never.sqlite"
    r = runner.invoke(app, [*shlex.split(rows["a"]["run"])[1:], "--steps", "20", "--dry-run", "--url", f"sqlite:///{out}"])
    assert r.exit_code == 0, r.output
    assert "runs: 1,023 (11 gammas x 31 etas x 3 seeds)" in r.output and not out.exists()


def test_a_sweep_of_the_quick_preset_not_yet_trained_names_the_grid_to_add(store: Store) -> None:
    from gammadb.runners.plan import plan_of, prepare
    from gammadb.runners.presets import preset

    prepare(store, plan_of(preset("quick")))
    rows = rows_of(verdict(store, "quick", n_boot=50))
    assert {r["verdict"] for r in rows.values()} == {"not testable here"}
    assert rows["a"]["note"].startswith("optimal-lr: ")  # nothing trained yet: the analysis says so
    assert (rows["a"]["theory"], rows["b"]["theory_text"]) == (2.0, "2/L = 0.667")
    # a sweep from `gammadb run` whose grid already covers every claim: run it (the same name and
    # grid, so finished runs are skipped)
    quick = ("gammadb run --name quick --adaptive --decades-below 2 --gamma 1e-3:1e3:13 --eta 1e-7:1e2:19 "
             "--seeds 3 --steps 500")
    assert rows["a"]["run"] == rows["f"]["run"] == quick


def test_the_command_for_a_gammadb_sweep_keeps_its_config_and_grid_points(store: Store, monkeypatch) -> None:
    """Its flags rebuild the stored spec's runs exactly (so rerunning skips them) and add the new ones."""
    from gammadb.runners import dryrun
    from gammadb.runners.plan import plan_of, prepare, run_spec
    from gammadb.runners.presets import preset

    spec = preset("mlp-depth3")
    prepare(store, plan_of(spec))
    row = rows_of(verdict(store, "mlp-depth3", n_boot=50))["a"]
    assert row["run"] == ("gammadb run --name mlp-depth3 --width 128 --batch-size 64 --set probe_size=64 "
                          "--set test_size=5000 --set sharpness_size=256 --set sharpness_iters=20 --adaptive "
                          "--decades-below 2 --gamma 1e-3:1e2:11 --eta 1e-8:1e2:21 --seeds 3 --steps 1000")
    seen = []
    monkeypatch.setattr(dryrun, "estimate", lambda plan, options: seen.append(plan) or _Text())
    r = runner.invoke(app, [*shlex.split(row["run"])[1:], "--dry-run"])
    assert r.exit_code == 0, r.output
    old = {run_spec(c).point_key() for c in plan_of(spec).configs}
    new = {run_spec(c).point_key() for c in seen[0].configs}
    assert old < new and len(new) == 11 * 21 * 3 and seen[0].adaptive and seen[0].decades_below == 2.0


class _Text:
    def text(self) -> str:
        return "planned"


def test_groups_get_their_own_rows_and_theory(claims_store: tuple[Store, str]) -> None:
    rep = verdict(claims_store[0], "depths", n_boot=50)
    b = {r.group: r for r in rep.rows if r.key == "b"}
    assert set(b) == {"depth=2", "depth=4"}
    assert (b["depth=2"].theory, b["depth=4"].theory) == (1.0, 0.5)
    assert all(r.verdict == Verdict.not_testable for r in b.values())
    assert "--depth 4" in b["depth=4"].run
    assert "group" in rep.table().columns and rep.table().height == len(rep.rows)


def test_unknown_sweep_and_bad_options_are_errors(claims_store: tuple[Store, str]) -> None:
    from gammadb.errors import InvalidSpecError, NotFoundError

    with pytest.raises(NotFoundError, match="no sweep named 'nope'"):
        verdict(claims_store[0], "nope")
    with pytest.raises(InvalidSpecError, match="--tolerance"):
        verdict(claims_store[0], "few", tolerance=-0.1)
    with pytest.raises(InvalidSpecError, match="--n-boot"):
        verdict(claims_store[0], "few", n_boot=3)


# ---------------------------------------------------------------------- the rule and the bootstrap
@pytest.mark.parametrize("theory, measured, interval, want", [
    (2.0, 1.9, (1.8, 1.95), True),  # inside once widened by 0.15
    (2.0, 1.7, (1.6, 1.84), False),  # 0.16 short
    (2.0, 1.86, None, True),  # no interval: the point, widened
    (2.0, 1.84, None, False),
    (-1.0, -1.04, (-1.06, -1.02), True),
], ids=["widened-in", "widened-out", "point-in", "point-out", "negative"])
def test_the_consistency_rule(theory: float, measured: float, interval, want: bool) -> None:
    assert within(theory, measured, interval, 0.15) is want


def test_best_gamma_interval_is_a_bootstrap_over_seeds() -> None:
    rows = []
    for gamma, base in ((0.1, 0.5), (10.0, 0.1)):
        for eta in (0.01, 0.1):
            for seed in range(3):
                rows.append(dict(gamma=gamma, eta=eta, seed=seed, value=base * (1 + eta + 0.01 * seed), diverged=False))
    runs = pl.DataFrame(rows)
    assert best_gamma_interval(runs, 100) == ((10.0, 10.0), 3)
    # a diverged seed makes its cell infinitely bad in every replicate that draws it; the other eta wins
    runs = runs.with_columns(((pl.col("gamma") == 10.0) & (pl.col("seed") == 0)).alias("diverged"))
    ci, _ = best_gamma_interval(runs, 200)
    assert ci == (0.1, 10.0)  # drawn in most replicates: gamma = 0.1 wins there, gamma = 10 in the rest
    assert best_gamma_interval(runs.filter(pl.col("seed") == 1), 100) == (None, 1)


def test_best_gamma_interval_takes_each_distinct_draw_once() -> None:
    """The same interval, bit for bit, as every one of the n_boot draws computed on its own."""
    rng = np.random.default_rng(2)
    for n_seeds in (2, 3, 5):
        runs = pl.DataFrame([dict(gamma=g, eta=e, seed=s, value=float(rng.lognormal()), diverged=bool(rng.random() < 0.1))
                             for g in (0.1, 1.0, 10.0, 100.0) for e in (0.01, 0.1, 1.0) for s in range(n_seeds)])
        gi = np.searchsorted([0.1, 1.0, 10.0, 100.0], runs["gamma"].to_numpy())
        ei = np.searchsorted([0.01, 0.1, 1.0], runs["eta"].to_numpy())
        val, ok, div = (np.zeros((4, 3, n_seeds)) for _ in range(3))
        d = runs["diverged"].to_numpy()
        val[gi, ei, runs["seed"].to_numpy()] = np.where(d, 0.0, runs["value"].to_numpy())
        ok[gi, ei, runs["seed"].to_numpy()], div[gi, ei, runs["seed"].to_numpy()] = ~d, d
        w = np.random.default_rng(7).multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=300).astype(float)
        num, den = np.einsum("bs,ges->bge", w, val), np.einsum("bs,ges->bge", w, ok)
        mean = np.where((np.einsum("bs,ges->bge", w, div) > 0) | (den == 0), np.inf, num / np.where(den > 0, den, 1))
        best = mean.min(axis=2)
        arg = np.argmin(best, axis=1)[np.isfinite(best).any(axis=1)]
        lo, hi = np.quantile(np.log10(np.array([0.1, 1.0, 10.0, 100.0])[arg]), [0.025, 0.975])
        assert best_gamma_interval(runs, 300, seed=7) == ((float(10**lo), float(10**hi)), n_seeds)


@pytest.mark.parametrize("sweep", ["holds", "depths", "few"])
def test_the_plateau_claim_analyses_only_the_runs_it_fits(claims_store: tuple[Store, str], sweep: str) -> None:
    """Claim (d) needs the scaling fit alone: the plateaus of each group's eta* family, not of every
    run; it is the whole analysis' scaling all the same, and within one page it is that one."""
    from gammadb.analysis.plateaus import analyze_plateau_scaling, analyze_plateaus, scaling_run_ids
    from gammadb.analysis.shared import shared_reads

    store = claims_store[0]
    whole = analyze_plateaus(store, sweep, gamma_min=1.0)
    runs = store.runs_frame(sweep)
    fitted = scaling_run_ids(runs, gamma_min=1.0)
    assert 0 < len(fitted) < runs.height / 2
    with shared_reads(store) as scope:
        assert analyze_plateau_scaling(store, sweep, gamma_min=1.0) == whole.scaling
        (covered, _), = scope.buckets.values()
        assert covered == frozenset(fitted)  # only those runs' losses were read and bucketed
        assert analyze_plateaus(store, sweep, gamma_min=1.0).scaling == whole.scaling
    with shared_reads(store):  # the whole analysis first: its scaling serves, nothing more is computed
        rep = analyze_plateaus(store, sweep, gamma_min=1.0)
        assert analyze_plateau_scaling(store, sweep, gamma_min=1.0) is rep.scaling


# ---------------------------------------------------------------------- the command
def test_cli_table_and_json(claims_store: tuple[Store, str]) -> None:
    url = claims_store[1]
    r = runner.invoke(app, ["analyze", "claims", "--sweep", "few", "--url", url, "--n-boot", "50", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["counts"] == {"consistent": 1, "inconsistent": 0, "not testable here": 6}
    assert [c["key"] for c in doc["claims"]] == KEYS and doc["tolerance"] == 0.15
    r = runner.invoke(app, ["analyze", "claims", "--sweep", "holds", "--url", url, "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert r.output.count("consistent") >= 14 and "inconsistent" not in r.output  # table + one line per claim
    assert "rule: consistent: the theory value lies in the measured 95% interval widened by +-0.15" in r.output
    r = runner.invoke(app, ["analyze", "claims", "--sweep", "few", "--url", url, "--n-boot", "50"])
    assert "    to test it: gammadb run --preset quick --name few-claims" in r.output
    r = runner.invoke(app, ["analyze", "claims", "--sweep", "nope", "--url", url])
    assert r.exit_code == 3 and r.output.startswith("error: no sweep named 'nope'")
    r = runner.invoke(app, ["analyze", "claims", "--sweep", "few", "--url", url, "--gamma-min", "0"])
    assert r.exit_code == 2 and "error: gamma_min must be > 0" in r.output
