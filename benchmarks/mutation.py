"""Mutation testing on demand: do the tests catch the bugs that matter?

Each entry of MUTATIONS is one realistic single bug in a core module (the models, the writer, the
store's claims and summaries, optimal-lr, plateaus, collapse, the sweep, read-only SQL): a source
file, an exact snippet, its replacement, and the test files (or node ids) that cover it. The script
copies the repository once to a temporary directory, checks that the covering tests pass there
unmutated (the baseline), then applies one mutation at a time to the COPY, runs its tests, and
restores the file. A mutation is *killed* when its tests fail (a test that runs past --timeout counts
as killed: that is a hang caught), *survived* when they pass. The working tree is never modified.

The copy is what gets imported: gammadb is installed editable from the working tree, with
gammadb.analysis / .runners / .migrations mapped onto the top-level folders, so the copy gets the
same layout as symlinks (gammadb/analysis -> ../analysis, ...) and runs with PYTHONPATH set to it,
and the script checks, before anything else, that every package resolves inside the copy.

Not collected by pytest (benchmarks/ is outside testpaths) and not run in CI: it takes minutes.
PostgreSQL-parametrised tests run when GAMMADB_TEST_PG_URL is set, as in the test suite; mutations of
PostgreSQL-only paths are skipped without it.

    python benchmarks/mutation.py                  # all mutations; exit 1 above --max-survival
    python benchmarks/mutation.py --only tau-inverted --only rerun-skips-failed
    python benchmarks/mutation.py --list
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"analysis": "analysis", "runners": "runners", "migrations": "migrations"}  # gammadb.X -> folder
SOURCES = ("gammadb", "analysis", "runners")  # where a moved snippet is looked for
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".benchmarks", "*.egg-info")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root; if the code moved, the one source file holding `old`
    old: str  # must occur exactly once in that file
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, or "-k" expressions
    why: str
    needs_pg: bool = False


GAPS = "tests/analysis/test_optimal_lr_invariants.py"
LR = "tests/analysis/test_optimal_lr.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---------------------------------------------------------------- optimal-lr
    Mutation("eta-max-absolute", "analysis/etas.py",
             "trained = ok & (check <= converged * init)", "trained = ok & (check <= converged)",
             (GAPS,), "'trained' compared with an absolute loss, not a fraction of the initial loss"),
    Mutation("eta-min-absolute", "analysis/etas.py",
             "left = ok & (check < threshold * init)", "left = ok & (check < threshold)",
             (GAPS,), "'left the plateau' compared with an absolute loss"),
    Mutation("bootstrap-zero-width", "analysis/optimal_lr.py",
             "w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=s.n_boot).astype(float)",
             "w = np.ones((s.n_boot, n_seeds))",
             (GAPS, f"{LR}::test_golden_points"), "every bootstrap draw keeps every seed once: an interval of zero width"),
    Mutation("parabola-vertex", "analysis/optimal_lr.py",
             "vertex = np.clip(-bb / (2 * a), xl, xr)", "vertex = np.clip(-bb / a, xl, xr)",
             (LR, "-k", "golden or refine_argmin"), "the parabola's vertex off by a factor 2"),
    Mutation("eta-max-smallest", "analysis/etas.py",
             'max_index=_index(st["trained"], top=True)',
             'max_index=_index(st["trained"], top=False)',
             (LR, "-k", "golden"), "eta_max taken as the smallest eta that trained"),
    Mutation("fit-prefactor-ln", "analysis/fits.py", "percentile_ci(slopes), 10**icpt,",
             "percentile_ci(slopes), np.exp(icpt),", ("tests/analysis/test_fits.py",),
             "the power law's prefactor read as a natural-log intercept"),
    # ---------------------------------------------------------------- the per-run table
    Mutation("sql-tail-ignores-nan", "analysis/_common.py",
             'pl.when(pl.col("tail_n") < pl.col("tail_rows")).then(math.nan)',
             "pl.when(pl.lit(False)).then(math.nan)",
             (f"{GAPS}::test_a_nan_in_the_tail_window_is_a_divergence_on_both_read_paths",),
             "the SQL tail mean skips a NaN stored as NULL (SQLite): the run looks healthy"),
    Mutation("summary-null-tail-healthy", "analysis/_common.py",
             'pl.col("s_tail").fill_null(math.nan).alias("tail_mean_loss")', 'pl.col("s_tail").alias("tail_mean_loss")',
             (f"{GAPS}::test_a_nan_in_the_tail_window_is_a_divergence_on_both_read_paths",),
             "the stored-summary path reads a NaN in the tail as 'not measured' (the bug issue 18 fixed)"),
    Mutation("tail-window-floor", "analysis/_common.py",
             "return budget - math.ceil(TAIL_FRACTION * n)", "return budget - int(TAIL_FRACTION * n)",
             (f"{LR}::test_budget_changes_the_aggregates_exactly",), "the SQL tail window one step short"),
    Mutation("budget-longest-run", "analysis/_common.py",
             'reach = int(ok["max_step"].min())', 'reach = int(ok["max_step"].max())',
             (LR, "-k", "budget"), "the default budget is a step some runs never reached"),
    Mutation("summary-tail-floor", "gammadb/store/summaries.py",
             "n_tail = max(1, math.ceil(TAIL_FRACTION * len(values)))", "n_tail = max(1, int(TAIL_FRACTION * len(values)))",
             (f"{LR}::test_summaries_and_sql_paths_agree",), "the stored summaries average a shorter tail than SQL"),
    # ---------------------------------------------------------------- store, writer, import, SQL
    Mutation("claim-finished-runs", "gammadb/store/queue.py",
             "q = select(Run).where(Run.sweep_id == sweep_id, Run.status == RunStatus.PENDING)",
             "q = select(Run).where(Run.sweep_id == sweep_id, Run.status != RunStatus.RUNNING)",
             ("tests/store/test_queue.py",), "a claim hands out finished runs again (a sweep then never ends)"),
    Mutation("upsert-keeps-old", "gammadb/store/writer.py",
             '"ON CONFLICT (run_id, metric_id, step) DO UPDATE SET value = excluded.value"',
             '"ON CONFLICT (run_id, metric_id, step) DO NOTHING"',
             ("tests/store/test_writer.py", "-k", "rewritten"), "a re-written step keeps its old value (SQLite)"),
    Mutation("pg-batch-keeps-first", "gammadb/store/writer.py",
             "latest = {(r, m, s): v for r, m, s, v in rows}", "latest = {(r, m, s): v for r, m, s, v in reversed(rows)}",
             ("tests/store/test_writer.py", "-k", "rewritten"), "a step re-written within a batch keeps its first value (PG)",
             needs_pg=True),
    Mutation("import-diverged-at-last", "gammadb/store/imports.py",
             '.agg(pl.col("step").min()).iter_rows())', '.agg(pl.col("step").max()).iter_rows())',
             ("tests/store/test_imports.py", "tests/cli/test_app.py", "-k", "import or diverg"),
             "an imported run diverges at its last non-finite step, not its first"),
    Mutation("sql-opened-writable", "gammadb/sqlexec.py",
             "conn = store.raw_connection(read_only=not write)", "conn = store.raw_connection(read_only=False)",
             ("tests/test_sqlexec.py",), "ad-hoc SQL opens the store writable"),
    # ---------------------------------------------------------------- the sweep
    Mutation("rerun-skips-failed", "runners/plan.py",
             "store.requeue(plan.name, failed=True)", "store.requeue(plan.name)",
             ("tests/runners/test_sweep.py::test_an_exception_in_training_marks_the_run_failed_and_the_sweep_goes_on",),
             "running a sweep again no longer retries its failed runs"),
    Mutation("adaptive-stops-early", "runners/eta_scan.py",
             "lowest = self.largest_convergent * 10 ** (-self.decades_below)",
             "lowest = self.largest_convergent * 10 ** (-self.decades_below / 2)",
             ("tests/runners/test_sweep.py::test_adaptive_scan_stops_below_the_largest_convergent_eta",),
             "the adaptive scan stops half way down its range"),
    # ---------------------------------------------------------------- models
    Mutation("centered-times-gamma", "runners/models.py",
             "return (out - out0) / gamma", "return (out - out0) * gamma",
             ("tests/runners/test_models.py",),
             "the output multiplied by gamma instead of divided"),
    Mutation("readout-sqrt", "runners/models.py",
             "return 1.0 / fan_in if readout else 1.0 / math.sqrt(fan_in)", "return 1.0 / math.sqrt(fan_in)",
             ("tests/runners/test_models.py",), "the readout in the NTK (1/sqrt) scaling instead of 1/width"),
    Mutation("lr-without-width", "runners/models.py",
             "return config.width * config.eta", "return config.eta",
             ("tests/runners/test_models.py",), "SGD's learning rate loses its width factor"),
    # ---------------------------------------------------------------- plateaus, collapse, tau
    Mutation("escape-half-way-in-log", "analysis/plateaus.py",
             "target = start - opts.escape_fraction * (start - final)",
             "target = 10 ** (gy[0] - opts.escape_fraction * (gy[0] - gy[-1]))",
             ("tests/analysis/test_curves.py", "-k", "escape"), "escape measured half way down in log loss"),
    Mutation("eta-star-ignores-divergence", "analysis/etas.py",
             'div = div | (pl.col("status") == RunStatus.DIVERGED.value)',
             'div = div | (pl.col("status") == "no such status")',
             ("tests/analysis/test_curves.py", "tests/analysis/test_etas_diverged.py", "-k", "eta_star"),
             "a diverged run's finite tail loss competes for eta*"),
    Mutation("collapse-theory-inverted", "analysis/collapse.py",
             "return math.log10(tau(1.0, eta, gamma)) - math.log10(tau(1.0, ref_eta, ref_gamma))",
             "return math.log10(tau(1.0, gamma, eta)) - math.log10(tau(1.0, ref_gamma, ref_eta))",
             ("tests/analysis/test_curves.py", "-k", "collapse"), "the theory's time scale upside down"),
    Mutation("collapse-shift-sign", "analysis/collapse.py",
             "shifts = _crossings(ref.x, ef, lv, falling) - _crossings(run.x, er, lv, falling)",
             "shifts = _crossings(run.x, er, lv, falling) - _crossings(ref.x, ef, lv, falling)",
             ("tests/analysis/test_curves.py", "-k", "collapse or time_scale"), "the fitted time shift's sign"),
    Mutation("tau-inverted", "analysis/clock.py",
             "    return eta * step / gamma", "    return gamma * step / eta",
             ("tests/cli/test_analyze_curves.py", "-k", "plot_curves_spec"),
             "tau (the data behind --x tau charts and the plateau marks) computed as gamma t / eta"),
)


@dataclasses.dataclass
class Outcome:
    mutation: Mutation
    verdict: str  # killed | survived | timeout | skipped | baseline-fails | not-applicable
    seconds: float
    detail: str = ""


def make_copy(dest: Path) -> Path:
    """The repository at ``dest``, laid out so that ``import gammadb.analysis`` etc. resolve in it."""
    repo = dest / "repo"
    shutil.copytree(ROOT, repo, ignore=IGNORE, symlinks=True)
    for pkg, folder in PACKAGES.items():
        link = repo / "gammadb" / pkg
        if not link.exists():
            link.symlink_to(Path("..") / folder, target_is_directory=True)
    return repo


def child_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutated and a restored file can share size and mtime
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def locate(repo: Path, m: Mutation) -> tuple[Path | None, str]:
    """The file of ``repo`` to mutate: ``m.path`` when it holds the snippet once, else the one source
    file that does (code moves between modules); None with the reason when there is no such file."""
    hinted = repo / m.path
    if hinted.is_file() and hinted.read_text().count(m.old) == 1:
        return hinted, ""
    hits = {}
    for folder in SOURCES:
        for f in sorted((repo / folder).rglob("*.py")):
            n = f.read_text().count(m.old)
            if n:
                hits[f.resolve()] = n
    if len(hits) == 1 and set(hits.values()) == {1}:
        found = next(iter(hits))
        return found, f"(moved to {found.relative_to(repo.resolve())})"
    return None, f"the snippet occurs {sum(hits.values())} times in {len(hits)} files (expected once): update it"


def module_of(repo: Path, path: Path) -> str:
    """The import name of a source file of ``repo`` (analysis/x.py is gammadb.analysis.x)."""
    parts = list(path.resolve().relative_to(repo.resolve()).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["gammadb", *parts] if parts[0] in PACKAGES else parts)


def check_imports(repo: Path, files: list[Path]) -> None:
    """Fail unless every module the mutations touch is imported from the copy, not the working tree."""
    mods = sorted({module_of(repo, f) for f in files})
    # A module that does not import (the tree mid-refactor) is left to its baseline run to report.
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    try: print(importlib.import_module(m).__file__)\n"
            "    except Exception: pass")
    out = subprocess.run([sys.executable, "-c", code, *mods], cwd=repo, env=child_env(repo),
                         capture_output=True, text=True)
    outside = [f for f in out.stdout.split() if not Path(f).resolve().is_relative_to(repo.resolve())]
    if out.returncode != 0 or outside:
        sys.exit(f"error: modules imported from outside the copy {repo}: {outside or out.stderr[-300:]}")


def run_tests(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, last line of pytest's output)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--timeout={int(timeout)}",
           *tests]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=repo, env=child_env(repo), capture_output=True, text=True,
                             timeout=timeout * 4 + 60)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, "killed after the overall limit"
    seconds = time.perf_counter() - t0
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    # What failed, from pytest's short summary (-ra), else its closing line.
    failed = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    last = (failed[0] if failed else lines[-1] if lines else "")[:160]
    if out.returncode == 0:
        return "passed", seconds, last
    if "Timeout" in out.stdout or "Timeout" in out.stderr:
        return "timeout", seconds, last
    if out.returncode == 5:
        return "failed", seconds, "no test collected: " + last
    return "failed", seconds, last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these mutations")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-test time limit in seconds (pytest-timeout)")
    ap.add_argument("--max-survival", type=float, default=0.1, help="exit 1 when more than this fraction survives")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = ap.parse_args(argv)

    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:30} {m.path:28} {m.why}")
        return 0
    unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
    if unknown:
        print(f"error: unknown mutation(s) {', '.join(unknown)}: see --list", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    has_pg = bool(os.environ.get("GAMMADB_TEST_PG_URL"))

    tmp = Path(tempfile.mkdtemp(prefix="gammadb-mutation-"))
    outcomes: list[Outcome] = []
    try:
        repo = make_copy(tmp)
        located = {m.name: locate(repo, m) for m in chosen}
        check_imports(repo, [f for f, _ in located.values() if f is not None])
        print(f"copy: {repo} (imports checked); {len(chosen)} mutation(s); PostgreSQL: {'yes' if has_pg else 'no'}",
              flush=True)
        baseline: dict[tuple[str, ...], tuple[str, str]] = {}
        for m in chosen:
            target, note = located[m.name]
            if m.needs_pg and not has_pg:
                outcomes.append(Outcome(m, "skipped", 0.0, "needs GAMMADB_TEST_PG_URL"))
            elif target is None:
                outcomes.append(Outcome(m, "not-applicable", 0.0, note))
            else:
                source = target.read_text()
                if m.tests not in baseline:
                    status, _, last = run_tests(repo, m.tests, args.timeout)
                    baseline[m.tests] = (status, last)
                status, last = baseline[m.tests]
                if status != "passed":
                    outcomes.append(Outcome(m, "baseline-fails", 0.0, f"unmutated tests: {last}"))
                else:
                    target.write_text(source.replace(m.old, m.new))
                    try:
                        status, seconds, last = run_tests(repo, m.tests, args.timeout)
                    finally:
                        target.write_text(source)
                    verdict = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
                    outcomes.append(Outcome(m, verdict, seconds, f"{last} {note}".strip()))
            o = outcomes[-1]
            print(f"{o.verdict.upper():15} {m.name:30} {o.seconds:6.1f} s  {o.detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    judged = [o for o in outcomes if o.verdict in ("killed", "survived", "timeout")]
    survived = [o for o in judged if o.verdict == "survived"]
    rate = len(survived) / len(judged) if judged else 0.0
    print(f"\n{len(judged)} mutation(s) judged: {len(judged) - len(survived)} killed "
          f"({sum(o.verdict == 'timeout' for o in judged)} by the time limit), {len(survived)} survived: "
          f"survival rate {100 * rate:.0f}%")
    for o in survived:
        print(f"  survived: {o.mutation.name} ({o.mutation.path}): {o.mutation.why}")
    unjudged = [o for o in outcomes if o not in judged]
    for o in unjudged:
        print(f"  not judged: {o.mutation.name}: {o.verdict}: {o.detail}")
    if not judged:
        print("error: no mutation could be judged", file=sys.stderr)
        return 2
    return 1 if rate > args.max_survival else 0


if __name__ == "__main__":
    sys.exit(main())
