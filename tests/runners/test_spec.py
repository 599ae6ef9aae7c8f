"""SweepSpec: grids, TOML and flag parsing, presets, expansion."""

from __future__ import annotations

import math

import pytest

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.runners.config import RunConfig
from gammadb.runners.datafiles import DataNotFoundError
from gammadb.runners.presets import list_presets, preset
from gammadb.runners.spec import (
    SweepSpec,
    load_spec,
    parse_grid,
    parse_seeds,
    spec_from_dict,
    spec_from_flags,
    spec_from_toml,
)


def test_log_grid_includes_both_ends_and_is_log_spaced() -> None:
    grid = parse_grid("1e-3:1e3:13")
    assert len(grid) == 13 and grid[0] == 1e-3 and grid[-1] == 1e3
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert all(math.isclose(r, math.sqrt(10), rel_tol=1e-9) for r in ratios)
    assert 1.0 in grid and 10.0 in grid  # decades are exact floats (rounded to 12 digits)
    assert parse_grid("1e-3:1e3:13") == parse_grid(" 1e-3 : 1e3 : 13 ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.1,1,10", (0.1, 1.0, 10.0)), ("10,1", (1.0, 10.0)), (2, (2.0,)), ([3, 1], (1.0, 3.0)), ("2:2:1", (2.0,))],
    ids=["commas", "unsorted", "number", "list", "single-point"],
)
def test_grid_other_forms(text, expected) -> None:
    assert parse_grid(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1:10", "lo:hi:n"),
        ("0:10:5", "must be > 0"),
        ("-1:10:5", "must be > 0"),
        ("10:1:5", "lo must be <= hi"),
        ("1:10:1", "n must be >= 2"),
        ("1:10:x", "n an integer"),
        ("a,b", "numbers separated by commas"),
        ("", "is empty"),
        ([0.1, -2], "finite and > 0"),
    ],
    ids=["two-parts", "zero", "negative", "reversed", "n1", "bad-n", "words", "empty", "negative-list"],
)
def test_grid_errors(text, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        parse_grid(text)


def test_seeds() -> None:
    assert parse_seeds(3) == (0, 1, 2)
    assert parse_seeds("2") == (0, 1)
    assert parse_seeds([4, 7]) == (4, 7)
    assert parse_seeds("4,7") == (4, 7)
    for bad in (0, -1, [1, 1], "x", [-2], True):
        with pytest.raises(InvalidSpecError, match="seeds"):
            parse_seeds(bad)


def _spec(**changes) -> SweepSpec:
    fields = dict(name="s", base=RunConfig(steps=10), gammas=(0.1, 1.0), etas=(0.01, 1.0, 0.1), seeds=(0, 1))
    fields.update(changes)
    return SweepSpec(**fields)


def test_expand_order_and_count() -> None:
    spec = _spec(axes=(("width", (16, 32)),))
    configs = spec.expand()
    assert len(configs) == len(spec) == 2 * 2 * 3 * 2
    assert [(c.width, c.gamma, c.eta, c.seed) for c in configs[:4]] == [(16, 0.1, 1.0, 0), (16, 0.1, 1.0, 1), (16, 0.1, 0.1, 0), (16, 0.1, 0.1, 1)]
    assert {c.steps for c in configs} == {10}


def test_expand_validates_every_config_and_names_the_sweep() -> None:
    with pytest.raises(InvalidSpecError, match="sweep 's'.*needs an image task"):
        _spec(base=RunConfig(model="cnn", depth=4)).expand()
    with pytest.raises(InvalidSpecError, match="cannot sweep 'gamma'"):
        _spec(axes=(("gamma", (1.0,)),)).expand()
    with pytest.raises(InvalidSpecError, match="needs a name"):
        _spec(name=" ").validate()


TOML = """
name = "depths"
gamma = "1e-2:1e2:5"
eta = [0.1, 1.0]
seeds = 2
steps = 50
adaptive = true
decades_below = 2

[base]
model = "mlp"
task = "teacher_cls"
loss_fn = "xent"
width = 32
depth = [2, 3]
"""


def test_toml_spec(tmp_path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(TOML)
    spec = load_spec(path)
    assert spec.name == "depths" and spec.gammas == (0.01, 0.1, 1.0, 10.0, 100.0) and spec.etas == (0.1, 1.0)
    assert spec.seeds == (0, 1) and spec.steps == 50 and spec.adaptive and spec.decades_below == 2.0
    assert spec.axes == (("depth", (2, 3)),)
    assert spec.base.loss_fn == "xent" and spec.base.width == 32
    assert len(spec.expand()) == 2 * 5 * 2 * 2
    assert spec_from_dict(spec.to_dict()) == spec


def test_toml_ensemble_round_trips() -> None:
    spec = spec_from_toml('preset = "quick"\nensemble = 16\n')
    assert spec.ensemble == 16 and spec.to_dict()["ensemble"] == 16
    assert spec_from_dict(spec.to_dict()) == spec


def test_toml_preset_override() -> None:
    spec = spec_from_toml('preset = "toy"\nname = "mine"\nsteps = 20\n[base]\ndepth = 3\n')
    assert spec.name == "mine" and spec.base.model == "toy" and spec.steps == 20 and spec.ensemble == 1
    assert spec.axes == ()  # depth given as a single value replaces the preset's depth axis
    assert spec.base.depth == 3 and spec.gammas == preset("toy").gammas


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\neta = [1.0]\n', "no gamma grid"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\nwidth = 3\n', "unknown sweep key"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\n[base]\ngamma = 2\n', "is swept"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\n[base]\nwidht = 2\n', "unknown run config field 'widht'"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\n[base]\nwidth = "wide"\n', "width must be an integer"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\nadaptive = 3\n', "adaptive must be true or false"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\nensemble = 0\n', "ensemble must be an integer >= 1"),
        ('name = "x"\ngamma = [1.0]\neta = [1.0]\nensemble = "8"\n', "ensemble must be an integer >= 1"),
        ('preset = "nope"\n', "unknown preset 'nope'"),
        ("name = \n", "not valid TOML"),
    ],
    ids=["no-gamma", "unknown-key", "swept-in-base", "typo-field", "bad-type", "bad-bool", "ensemble-0", "ensemble-str",
         "bad-preset", "bad-toml"],
)
def test_toml_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message) as info:
        spec_from_toml(text)
    assert "\n" not in str(info.value)


def test_missing_spec_file(tmp_path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def test_spec_from_flags() -> None:
    spec = spec_from_flags(name="mine", gamma="0.1:10:3", eta="1,0.1", seeds="2", steps="40", set_fields=["width=16", "depth=2,3"])
    assert spec.name == "mine" and spec.gammas == (0.1, 1.0, 10.0) and spec.etas == (0.1, 1.0)
    assert spec.seeds == (0, 1) and spec.steps == 40 and spec.base.width == 16
    assert spec.axes == (("depth", (2, 3)),)
    assert spec_from_flags() == preset("quick")
    with pytest.raises(InvalidSpecError, match="field=value"):
        spec_from_flags(set_fields=["width"])


def test_presets() -> None:
    infos = {p.name: p for p in list_presets()}
    assert {"quick", "toy", "mlp-depth3", "paper-mnist"} <= set(infos)
    for name in ("quick", "toy", "mlp-depth3"):
        configs = preset(name).expand()
        assert len(configs) == infos[name].runs > 0
    toy = preset("toy")
    assert dict(toy.axes)["depth"] == (2, 3, 4)
    assert toy.gammas[0] == 1e-3 and toy.gammas[-1] == 1e3
    per_decade = (len(toy.etas) - 1) / math.log10(toy.etas[-1] / toy.etas[0])
    assert per_decade >= 4
    quick = preset("quick")
    assert quick.gammas[0] < 1 < quick.gammas[-1]  # lazy and rich
    with pytest.raises(DataNotFoundError, match="needs a data directory"):
        preset("paper-mnist").expand()
    with pytest.raises(InvalidSpecError, match="unknown preset"):
        preset("huge")
