"""`gammadb run --dry-run` and `gammadb.runners.dryrun.estimate`: the plan and a calibrated estimate of the
wall time, with nothing written to the store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.runners.dryrun import HOUR, estimate
from gammadb.runners.launch import LaunchOptions
from gammadb.runners.plan import plan_of
from gammadb.runners.presets import preset
from gammadb.runners.spec import spec_from_flags
from gammadb.store import Store

runner = CliRunner()
SMALL = ["--gamma", "0.1,10", "--eta", "1e-3:1e-1:3", "--seeds", "1", "--steps", "30", "--name", "small"]


def estimate_seconds(output: str) -> float:
    m = re.search(r"^estimate: ([\d.]+) (s|min|h|days)\b", output, flags=re.MULTILINE)
    assert m, output
    return float(m.group(1)) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[m.group(2)]


def test_quick_preset_dry_run_counts_its_runs_and_creates_no_store(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    r = runner.invoke(app, ["run", "--dry-run", "--url", f"sqlite:///{path}"])
    assert r.exit_code == 0, r.output
    quick = preset("quick")
    assert len(quick) == 741 and len(quick.expand()) == 741
    assert "runs: 741 (13 gammas x 19 etas x 3 seeds), 500 steps each: 370,500 steps in all" in r.output
    assert "ensembles: 24 of up to 32 members: 24 training units" in r.output
    assert "adaptive: yes: per gamma, eta from large to small, stopping 2 decades below" in r.output
    assert "calibration on cpu (mlp L=3 N=64 B=32 float32, 32 members)" in r.output
    assert estimate_seconds(r.output) > 0
    assert "warning:" not in r.output
    assert not path.exists() and not list(tmp_path.iterdir())


def test_dry_run_leaves_an_existing_store_untouched(store_url: str) -> None:
    with Store.open(store_url) as store:
        before = store.read("SELECT COUNT(*) AS n FROM sweeps")["n"][0]
    r = runner.invoke(app, ["run", *SMALL, "--dry-run", "--url", store_url])
    assert r.exit_code == 0, r.output
    assert "runs: 6 (2 gammas x 3 etas x 1 seed), 30 steps each: 180 steps in all" in r.output
    with Store.open(store_url) as store:
        assert before == 0 and store.read("SELECT COUNT(*) AS n FROM sweeps")["n"][0] == 0
        assert store.read("SELECT COUNT(*) AS n FROM runs")["n"][0] == 0


def test_ensembles_count_as_one_unit_each() -> None:
    spec = spec_from_flags(gamma="0.1,10", eta="1e-3:1e-1:3", seeds="1", steps=30, name="ens")
    plan = plan_of(spec)
    solo = estimate(plan, LaunchOptions(device="cpu", ensemble=1), calibration_steps=(2, 10))
    ens = estimate(plan, LaunchOptions(device="cpu", ensemble=4), calibration_steps=(2, 10))
    assert (solo.runs, solo.units, solo.ensembles) == (6, 6, 0)
    assert (ens.runs, ens.units, ens.ensembles, ens.ensemble_size) == (6, 2, 2, 4)  # members 4 + 2
    assert ens.calibrations[0].members == 4 and solo.calibrations[0].members == 1
    assert "ensembles: 2 of up to 4 members: 2 training units" in ens.text()
    assert ens.seconds > 0 and solo.seconds > 0
    # the estimate is the calibrated unit cost times the units, plus the process start-up
    c = ens.calibrations[0]
    n_cadence = 7  # 'log' at 30 steps: theta_t for t = 0, 1, 2, 5, 10, 20 and the last step
    assert ens.seconds == pytest.approx(ens.startup + 2 * (c.setup + 30 * c.step + n_cadence * c.cadence))


def test_two_workers_share_the_units() -> None:
    plan = plan_of(spec_from_flags(gamma="1", eta="0.1,0.01", seeds="1", steps=20, name="w"))
    est = estimate(plan, LaunchOptions(device="cpu", workers=2), calibration_steps=(2, 10))
    c = est.calibrations[0]
    assert est.parallel == 2 and "with 2 workers" in est.text()
    assert est.seconds == pytest.approx(est.startup + (c.setup + 20 * c.step + 6 * c.cadence))


def test_a_sweep_over_an_hour_says_so_on_a_line_of_its_own() -> None:
    plan = plan_of(spec_from_flags(gamma="1", eta="0.1", steps=100_000_000, name="long", set_fields=["cadence=none"]))
    est = estimate(plan, LaunchOptions(device="cpu"), calibration_steps=(2, 10))
    assert est.seconds > HOUR
    lines = est.text().splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [line for line in lines if "more than an hour" in line] and len(warnings) == 1
    assert warnings[0].startswith("warning: this sweep would take more than an hour (")


def test_bad_grid_is_refused_before_anything(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    r = runner.invoke(app, ["run", "--dry-run", "--gamma", "-1", "--url", f"sqlite:///{path}"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output
    assert not path.exists()
