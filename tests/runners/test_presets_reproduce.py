"""The `reproduce` preset (docs/reproduce.md): its grid can answer claim 1 per depth under the default
fit ranges of `analyze optimal-lr`, and `gammadb run --preset reproduce --dry-run` plans it (the
calibration's training is replaced by fixed timings: nothing is trained here)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gammadb.analysis.optimal_lr import Settings
from gammadb.cli import app
from gammadb.runners import dryrun
from gammadb.runners.presets import list_presets, preset

runner = CliRunner()


def test_reproduce_preset_sweeps_depths_2_3_4_with_gammas_on_both_sides() -> None:
    spec = preset("reproduce")
    infos = {p.name: p for p in list_presets()}
    assert spec.name == "reproduce" and infos["reproduce"].runs == len(spec) == len(spec.expand())
    assert dict(spec.axes)["depth"] == (2, 3, 4)
    assert spec.base.model == "mlp" and spec.base.loss_fn == "mse" and spec.base.optimizer == "sgd"
    assert spec.adaptive and spec.ensemble > 1 and len(spec.seeds) >= 3  # seeds: the bootstrap intervals
    s = Settings()  # the fit ranges `gammadb analyze optimal-lr --sweep reproduce` uses
    small = [g for g in spec.gammas if g <= s.small_max]
    large = [g for g in spec.gammas if g >= s.large_min]
    assert len(small) >= 3 and len(large) >= 3
    # eta* is a parabola-refined interior minimum: at least 4 etas per decade everywhere (docs/reproduce.md)
    log_etas = sorted(math.log10(e) for e in spec.etas)
    assert max(b - a for a, b in zip(log_etas, log_etas[1:])) <= 1 / 4 + 1e-9
    # the grid spans eta* at both ends: a few gamma^2 at the smallest gamma, the edge of stability
    # (about 10 gamma for L = 2) at the largest
    assert min(spec.etas) <= 0.1 * min(spec.gammas) ** 2 and max(spec.etas) >= 10 * max(spec.gammas)


def _fake_timed(members, device, steps, cadence, budget=None):  # noqa: ANN001, ANN202
    # dryrun._timed's contract (seconds, steps done) without training anything
    return 1e-3 + 1e-4 * steps * len(members), steps


def test_dry_run_plans_the_reproduce_preset_without_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dryrun, "_timed", _fake_timed)
    path = tmp_path / "store.sqlite"
    r = runner.invoke(app, ["run", "--preset", "reproduce", "--dry-run", "--url", f"sqlite:///{path}"])
    assert r.exit_code == 0, r.output
    spec = preset("reproduce")
    n_g, n_e, n_s = len(spec.gammas), len(spec.etas), len(spec.seeds)
    assert (f"runs: {len(spec):,} ({n_g} gammas x {n_e} etas x {n_s} seeds x 3 depth values), "
            f"{spec.steps:,} steps each") in r.output
    assert f"adaptive: yes: per gamma, eta from large to small, stopping {spec.decades_below:g} decades below" in r.output
    for depth in (2, 3, 4):
        assert re.search(rf"^calibration on cpu \(mlp L={depth} N={spec.base.width} B={spec.base.batch_size} ",
                         r.output, flags=re.MULTILINE), r.output
    assert re.search(r"^estimate: [\d.]+ (s|min)\b", r.output, flags=re.MULTILINE), r.output
    assert not path.exists() and not list(tmp_path.iterdir())
