"""RunConfig: validation, serialisation, typed columns, cadence."""

from __future__ import annotations

import json
import math

import pytest

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.runners.config import RunConfig, cadence_steps
from gammadb.runners.datafiles import DataNotFoundError


def test_defaults_validate_and_config_is_frozen() -> None:
    config = RunConfig().validate()
    with pytest.raises(AttributeError):
        config.gamma = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("gamma", "dtype", "resolved"),
    [(1e-3, "auto", "float64"), (1e-2, "auto", "float32"), (1.0, "auto", "float32"), (1.0, "float64", "float64"), (1e-4, "float32", "float32")],
    ids=["small-gamma-auto", "threshold-auto", "gamma1-auto", "explicit64", "explicit32"],
)
def test_dtype_resolution(gamma: float, dtype: str, resolved: str) -> None:
    config = RunConfig(gamma=gamma, dtype=dtype)  # type: ignore[arg-type]
    assert config.resolved_dtype == resolved
    assert config.hyper_params()["dtype"] == resolved


def test_hyper_params_are_the_typed_columns() -> None:
    params = RunConfig(task="gmm", gamma=0.5, eta=2, width=64).hyper_params()
    assert set(params) == {"model", "dataset", "loss_fn", "optimizer", "depth", "width", "batch_size", "gamma", "eta", "seed", "dtype", "steps"}
    assert params["dataset"] == "gmm"
    assert isinstance(params["eta"], float) and params["eta"] == 2.0


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(model="toy", task="toy", width=1, batch_size=1, depth=4, gamma=1e-3, cadence=50),
        RunConfig(task="mnist1m", data_dir="/data/mnist1m", loss_fn="xent", optimizer="adam", cadence="every"),
    ],
    ids=["default", "toy-int-cadence", "data-dir"],
)
def test_json_round_trip(config: RunConfig) -> None:
    text = config.to_json()
    assert json.loads(text) == config.to_dict()
    assert RunConfig.from_json(text) == config


def test_from_json_accepts_int_for_float_and_rejects_unknown_fields() -> None:
    assert RunConfig.from_json('{"gamma": 1, "eta": 2}').gamma == 1.0
    with pytest.raises(InvalidSpecError, match="unknown run config field"):
        RunConfig.from_json('{"gama": 1}')
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        RunConfig.from_json("{")


def test_from_strings_parses_by_field_type() -> None:
    config = RunConfig.from_strings({"width": "256", "gamma": "1e-3", "ntk": "false", "cadence": "100", "data_seed": "3"})
    assert (config.width, config.gamma, config.ntk, config.cadence, config.data_seed) == (256, 1e-3, False, 100, 3)
    with pytest.raises(InvalidSpecError, match="width must be an integer"):
        RunConfig.from_strings({"width": "wide"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gamma": 0.0}, "gamma must be a finite number > 0"),
        ({"gamma": -1.0}, "gamma must be a finite number > 0"),
        ({"gamma": math.nan}, "gamma must be a finite number > 0"),
        ({"eta": 0.0}, "eta must be a finite number > 0"),
        ({"eta": math.inf}, "eta must be a finite number > 0"),
        ({"model": "transformer"}, "unknown model 'transformer'"),
        ({"task": "imagenet"}, "unknown task 'imagenet'"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"width": 0}, "width must be an integer >= 1"),
        ({"cadence": "sometimes"}, "cadence must be"),
        ({"loss_fn": "xent"}, "needs a classification task"),
        ({"model": "cnn", "depth": 4}, "needs an image task"),
        ({"model": "cnn", "task": "mnist5k"}, "fixed depth of 4"),
        ({"model": "toy", "task": "toy"}, "set width=1, batch_size=1"),
        ({"model": "toy"}, "go together"),
        ({"depth": 1}, "needs depth >= 2"),
        ({"task": "staircase", "out_dim": 2}, "one output"),
        ({"task": "mnist5k", "input_dim": 100}, "leave input_dim unset"),
        ({"data_dir": "/tmp"}, "reads no data directory"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_validate_rejects_bad_input_with_one_line_messages(changes: dict, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message) as info:
        RunConfig(**changes).validate()
    assert "\n" not in str(info.value)


def test_missing_data_dir_is_both_not_found_and_invalid_spec(tmp_path) -> None:
    with pytest.raises(DataNotFoundError, match="needs a data directory") as info:
        RunConfig(task="mnist1m").validate()
    assert isinstance(info.value, NotFoundError) and isinstance(info.value, InvalidSpecError)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        RunConfig(task="cifar5m", data_dir=str(tmp_path / "nope")).validate()
    with pytest.raises(DataNotFoundError, match="no cifar5m_part"):
        RunConfig(task="cifar5m", data_dir=str(tmp_path)).validate()
    # check_files=False validates the rest without touching the disk.
    RunConfig(task="cifar5m", data_dir=str(tmp_path / "nope")).validate(check_files=False)


@pytest.mark.parametrize(
    ("cadence", "steps", "expected"),
    [
        # theta_t for t = 0, 1, 2, 5, 10, ... at step t + 1, and theta_T at the last step
        ("log", 1000, {1, 2, 3, 6, 11, 21, 51, 101, 201, 501, 1000}),
        ("log", 30, {1, 2, 3, 6, 11, 21, 30}),
        ("every", 4, {1, 2, 3, 4}),
        (10, 35, {10, 20, 30, 35}),
        ("none", 10, set()),
    ],
    ids=["log", "log-last-step", "every", "int", "none"],
)
def test_cadence_steps(cadence: str | int, steps: int, expected: set[int]) -> None:
    chosen = cadence_steps(cadence, steps)
    assert {t for t in range(1, steps + 1) if t in chosen} == expected
    assert RunConfig(cadence=cadence, steps=steps).cadence_steps() == chosen
