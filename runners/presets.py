"""The named sweep presets (quick, toy, mlp-depth3, reproduce, paper-mnist) that ``gammadb run --preset`` starts from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gammadb.errors import InvalidSpecError
from gammadb.runners.config import RunConfig
from gammadb.runners.spec import SweepSpec, parse_grid


@dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    runs: int


def _quick() -> SweepSpec:
    # The main job: it must answer the paper's first question (eta* against gamma on both sides of
    # gamma = 1, with bootstrap intervals) in about a minute on 2 CPU cores. Half-decade gammas over
    # 1e-3..1e3 give 5 points on each side of the fits (gamma <= 0.1, >= 10); 3 seeds give the
    # bootstrap; the adaptive scan trains only the etas around each gamma's edge of stability, and
    # ensembles of 32 stack each round's eta levels. Small fixed batches for the probe and the Hessian
    # keep the per-step and cadence measurements from costing more than the training itself.
    return SweepSpec(
        name="quick",
        description="MLP L=3 N=64 on the teacher task, 500 steps, gamma 1e-3..1e3 and eta by half decades, 3 seeds, adaptive scan, ensembles of 32: eta* exponents on both sides of gamma = 1 in about a minute on 2 CPU cores",
        base=RunConfig(
            model="mlp", task="teacher", depth=3, width=64, batch_size=32, steps=500,
            probe_size=32, test_size=500, sharpness_size=64, sharpness_iters=10,
        ),
        gammas=parse_grid("1e-3:1e3:13"),
        etas=parse_grid("1e-7:1e2:19"),
        seeds=(0, 1, 2),
        adaptive=True,
        decades_below=2.0,
        ensemble=32,
    )


def _toy() -> SweepSpec:
    return SweepSpec(
        name="toy",
        description="the toy model of docs/theory.md, L=2,3,4, gamma 1e-3..1e3, 4 eta per decade; checks exact theory",
        base=RunConfig(
            model="toy", task="toy", width=1, batch_size=1, depth=2, steps=500,
            feature_alignment=False, ntk=False, sharpness_iters=5,
        ),
        gammas=parse_grid("1e-3:1e3:13"),
        etas=parse_grid("1e-8:1e4:49"),
        axes=(("depth", (2, 3, 4)),),
        adaptive=True,
        decades_below=3.0,
    )


def _mlp_depth3() -> SweepSpec:
    return SweepSpec(
        name="mlp-depth3",
        description="MLP L=3 N=128 on the teacher task, 1000 steps, half-decade grids; about a CPU minute with the adaptive scan",
        base=RunConfig(model="mlp", task="teacher", depth=3, width=128, batch_size=64, steps=1000),
        gammas=parse_grid("1e-2:1e2:9"),
        etas=parse_grid("1e-6:1e2:17"),
        adaptive=True,
        decades_below=2.0,
    )


def _reproduce() -> SweepSpec:
    # Claim 1 on real networks (docs/reproduce.md has the measurements behind every choice): eta* ~
    # gamma^2 at gamma << 1 and ~ gamma^(2/L) at gamma >> 1 for L = 2, 3, 4, within 0.15 and with
    # intervals at most 0.3 wide, in at most 15 minutes on 2 CPU cores.
    # - Task gmm (4-class Gaussian mixture, MSE on one-hot targets, as the paper's MNIST): its loss
    #   against eta has one clear minimum. On the teacher task the minimum at large gamma is a flat
    #   bottom with two dips (one at the edge of stability, one lower) and eta* jumps between them as
    #   the budget grows (L = 3: exponent 0.71 at 500 steps, 0.95 at 1,000).
    # - 2,000 steps: eta* itself keeps falling slowly with the budget at every gamma alike (the online
    #   noise floor), so what must settle is the exponent: L = 2 and 3 are the same at 500 and 1,000
    #   steps (1.006 / 1.006, 0.71 / 0.69); L = 4, whose plateau grows as gamma^(1/2), needs ~2,000
    #   (0.74 at 500, 0.68 at 1,000, 0.64 at 2,000 to 4,000 steps over gamma 1e2..1e4).
    # - gammas 1e-4..1e-2 (the lazy regime, where eta* / gamma^2 is exactly constant; at 0.03..0.1 the
    #   local slope already leaves 2) and 1e2..10^3.5 (the toy's crossover bias 2(L-1)/(L(1+gamma)) is
    #   below 0.015 there; L = 4 reads 0.63 there at 1,000 steps and 0.59 at 2,000, while above 10^3.5
    #   it still moves at 4,000): only the fit ranges, so the default `analyze optimal-lr` (gamma <= 0.1
    #   and >= 10) fits exactly these.
    # - eta by quarter decades: eta* is an interior minimum refined by a parabola, its bootstrap
    #   intervals 0.005 to 0.16 decade wide; 1e-10..1e5 spans eta* at 1e-4 (L = 2: 1.8e-8) and the
    #   edge at 10^3.5 (L = 2: ~3e4).
    # - 3 seeds for the bootstrap; width 64, batch 32; sharpness, NTK and feature alignment off (they
    #   double the cost and claim 1 reads only losses).
    return SweepSpec(
        name="reproduce",
        description="claim 1 on MLPs L=2,3,4 (N=64, B=32, gmm task, 2000 steps): eta* exponents at gamma 1e-4..1e-2 "
                    "and 1e2..10^3.5, 3 seeds, adaptive scan, ensembles of 32; ~10 min on 2 CPU cores "
                    "(docs/reproduce.md; benchmarks/reproduce.py)",
        base=RunConfig(
            model="mlp", task="gmm", depth=3, width=64, batch_size=32, steps=2000,
            probe_size=32, test_size=500, sharpness_size=64, sharpness=False, ntk=False, feature_alignment=False,
        ),
        gammas=parse_grid("1e-4:1e-2:5") + parse_grid("1e2:3162.2776601683795:4"),
        etas=parse_grid("1e-10:1e5:61"),
        seeds=(0, 1, 2),
        axes=(("depth", (2, 3, 4)),),
        adaptive=True,
        decades_below=2.0,
        ensemble=32,
    )


def _paper_mnist() -> SweepSpec:
    return SweepSpec(
        name="paper-mnist",
        description="The paper's MNIST-1M MLP sweep (L=3, N=1000, B=128, MSE, one pass); needs --data-dir and a GPU",
        base=RunConfig(
            model="mlp", task="mnist1m", depth=3, width=1000, batch_size=128, steps=7812, test_size=5000,
        ),
        gammas=parse_grid("1e-5:1e5:21"),
        etas=parse_grid("1e-12:1e12:49"),
        adaptive=True,
        decades_below=3.0,
    )


PRESETS: dict[str, Callable[[], SweepSpec]] = {
    "quick": _quick,
    "toy": _toy,
    "mlp-depth3": _mlp_depth3,
    "reproduce": _reproduce,
    "paper-mnist": _paper_mnist,
}


def preset(name: str) -> SweepSpec:
    """The preset called ``name``; InvalidSpecError listing the presets if there is none."""
    if name not in PRESETS:
        raise InvalidSpecError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def list_presets() -> list[PresetInfo]:
    """Name, description and number of runs of every preset."""
    return [PresetInfo(name, spec.description, len(spec)) for name, spec in ((n, f()) for n, f in PRESETS.items())]
