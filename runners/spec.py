"""SweepSpec: a grid of runs over (gamma, eta, seed), from a TOML file, CLI flags or a preset
(``gammadb.runners.presets``).

TOML form (every key optional except what the preset does not provide)::

    name = "my-sweep"
    preset = "quick"            # start from a preset, then override
    gamma = "1e-3:1e3:13"       # log grid lo:hi:n (n points, ends included), or a list [0.1, 1.0]
    eta = "1e-4:1e2:25"
    seeds = 2                   # int n -> seeds 0..n-1, or a list [0, 7]
    steps = 2000
    adaptive = true             # scan eta from high to low per gamma, stop decades_below the first
    decades_below = 3           #   convergent eta (the orchestrator reads these; expand() ignores them)
    ensemble = 32               # train up to 32 compatible grid points as one stacked model (CLI --ensemble wins)
    description = "..."

    [base]                      # any RunConfig field except gamma / eta / seed
    model = "mlp"
    width = 256
    depth = [2, 3, 4]           # a list makes the field a swept axis too

Torch-free. Errors are one-line InvalidSpecErrors that say what to fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.runners.config import RunConfig, field_names, parse_field_value

SWEPT = ("gamma", "eta", "seed")
_TOP_KEYS = {"name", "preset", "gamma", "eta", "seeds", "steps", "adaptive", "decades_below", "ensemble",
             "description", "base"}


@dataclass(frozen=True)
class SweepSpec:
    """A named grid of RunConfigs: ``axes`` x gammas x etas x seeds over a base config.

    ``adaptive`` / ``decades_below`` describe the learning-rate scan the orchestrator runs (for each
    gamma, etas from high to low; after the first convergent eta, continue ``decades_below`` decades
    down, then stop; a later NaN moves the anchor below it, and cross-entropy at gamma < 1 scans the
    whole grid: the authors' rule, ``gammadb.runners.eta_scan``); ``expand`` always lists the full grid. ``ensemble`` is how many compatible
    grid points the orchestrator and workers may stack into one model (1: one run at a time).
    """

    name: str
    base: RunConfig
    gammas: tuple[float, ...]
    etas: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    adaptive: bool = False
    decades_below: float = 3.0
    ensemble: int = 1
    description: str = ""

    @property
    def steps(self) -> int:
        return self.base.steps

    def __len__(self) -> int:
        n = len(self.gammas) * len(self.etas) * len(self.seeds)
        for _, values in self.axes:
            n *= len(values)
        return n

    def validate(self) -> SweepSpec:
        """Raise InvalidSpecError for a malformed spec (the configs themselves are checked by expand)."""
        if not self.name or not self.name.strip():
            raise InvalidSpecError("a sweep needs a name: set name = \"...\" (or --name)")
        for label, values in (("gamma", self.gammas), ("eta", self.etas)):
            if not values:
                raise InvalidSpecError(f"{label} grid is empty: give a list or lo:hi:n")
            bad = [v for v in values if not (isinstance(v, float) and math.isfinite(v) and v > 0)]
            if bad:
                raise InvalidSpecError(f"{label} values must be finite numbers > 0, got {bad[0]!r}")
        if not self.seeds:
            raise InvalidSpecError("seeds is empty: give a count n >= 1 or a list of seeds")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise InvalidSpecError("seeds must be distinct integers >= 0")
        names = set(field_names())
        for axis, values in self.axes:
            if axis in SWEPT or axis not in names:
                raise InvalidSpecError(f"cannot sweep {axis!r} as a base axis: use the gamma/eta/seeds keys")
            if not values:
                raise InvalidSpecError(f"axis {axis!r} has no values")
        if not (isinstance(self.decades_below, (int, float)) and self.decades_below > 0):
            raise InvalidSpecError(f"decades_below must be > 0, got {self.decades_below!r}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 1:
            raise InvalidSpecError(f"ensemble must be an integer >= 1, got {self.ensemble!r}")
        return self

    def expand(self, *, check_files: bool = True) -> list[RunConfig]:
        """Every run of the grid, validated. Order: axes (as given), gamma ascending, eta descending
        (the order an adaptive scan visits them), seed ascending."""
        self.validate()
        axis_names = [a for a, _ in self.axes]
        configs = []
        for axis_values in itertools.product(*(v for _, v in self.axes)):
            base = dataclasses.replace(self.base, **dict(zip(axis_names, axis_values)))
            for gamma in sorted(self.gammas):
                for eta in sorted(self.etas, reverse=True):
                    for seed in self.seeds:
                        config = dataclasses.replace(base, gamma=gamma, eta=eta, seed=seed)
                        try:
                            config.validate(check_files=check_files)
                        except InvalidSpecError as exc:
                            where = ", ".join(f"{k}={v}" for k, v in zip(axis_names, axis_values))
                            raise type(exc)(f"sweep {self.name!r}{' (' + where + ')' if where else ''}: {exc}") from None
                        configs.append(config)
        return configs

    def to_dict(self) -> dict[str, Any]:
        """A TOML/JSON-shaped dict that ``spec_from_dict`` reads back to an equal spec."""
        base = {k: v for k, v in self.base.to_dict().items() if k not in SWEPT and v is not None}
        for axis, values in self.axes:
            base[axis] = list(values)
        return {
            "name": self.name,
            "description": self.description,
            "gamma": list(self.gammas),
            "eta": list(self.etas),
            "seeds": list(self.seeds),
            "steps": self.base.steps,
            "adaptive": self.adaptive,
            "decades_below": self.decades_below,
            "ensemble": self.ensemble,
            "base": base,
        }


# ----- grids ---------------------------------------------------------------------------------------


def _round(value: float) -> float:
    # 12 significant digits: 10**(k/2) grids give the same floats on every platform and in every
    # database, so (gamma, eta) values can be compared exactly.
    return float(f"{value:.12g}")


def parse_grid(text: str | float | int | Sequence[float | int | str], *, label: str = "grid") -> tuple[float, ...]:
    """A sorted tuple of distinct positive floats from 'lo:hi:n' (n log-spaced points, both ends
    included), 'a,b,c', a single number, or a list of numbers."""
    if isinstance(text, bool):
        raise InvalidSpecError(f"{label} must be numbers or lo:hi:n, got {text!r}")
    if isinstance(text, (int, float)):
        values = [float(text)]
    elif isinstance(text, str):
        stripped = text.strip()
        if ":" in stripped:
            parts = stripped.split(":")
            if len(parts) != 3:
                raise InvalidSpecError(f"{label} {text!r}: write a log grid as lo:hi:n, e.g. 1e-3:1e3:13")
            try:
                lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise InvalidSpecError(f"{label} {text!r}: lo and hi must be numbers and n an integer") from None
            if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
                raise InvalidSpecError(f"{label} {text!r}: lo and hi must be > 0 (the grid is logarithmic)")
            if lo > hi:
                raise InvalidSpecError(f"{label} {text!r}: lo must be <= hi")
            if n < 1 or (n == 1 and lo != hi):
                raise InvalidSpecError(f"{label} {text!r}: n must be >= 2 (or 1 with lo == hi)")
            if n == 1:
                values = [lo]
            else:
                a, b = math.log10(lo), math.log10(hi)
                values = [10 ** (a + (b - a) * i / (n - 1)) for i in range(n)]
                values[0], values[-1] = lo, hi
        else:
            try:
                values = [float(v) for v in stripped.split(",") if v.strip()]
            except ValueError:
                raise InvalidSpecError(f"{label} {text!r}: give numbers separated by commas, or lo:hi:n") from None
    else:
        try:
            values = [float(v) for v in text]
        except (TypeError, ValueError):
            raise InvalidSpecError(f"{label} must be a list of numbers, got {text!r}") from None
    if not values:
        raise InvalidSpecError(f"{label} is empty: give numbers or lo:hi:n")
    for v in values:
        if not (math.isfinite(v) and v > 0):
            raise InvalidSpecError(f"{label} values must be finite and > 0, got {v!r}")
    return tuple(sorted({_round(v) for v in values}))


def parse_seeds(value: int | str | Sequence[int | str]) -> tuple[int, ...]:
    """An int n (or 'n') -> seeds 0..n-1; a list (or 'a,b,c') -> those seeds."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            count = value
        elif isinstance(value, str) and "," not in value:
            count = int(value.strip())
        else:
            items = value.split(",") if isinstance(value, str) else list(value)
            seeds = tuple(int(s) for s in items if str(s).strip())
            if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
                raise ValueError
            return seeds
    except (TypeError, ValueError):
        raise InvalidSpecError(f"seeds must be a count n >= 1 or a list of distinct seeds >= 0, got {value!r}") from None
    if count < 1:
        raise InvalidSpecError(f"seeds count must be >= 1, got {count}")
    return tuple(range(count))


# ----- building specs ------------------------------------------------------------------------------


def _base_and_axes(base: RunConfig, fields: Mapping[str, Any], *, from_text: bool) -> tuple[RunConfig, tuple[tuple[str, tuple[Any, ...]], ...]]:
    names = set(field_names())
    changes: dict[str, Any] = {}
    axes: list[tuple[str, tuple[Any, ...]]] = []
    for key, value in fields.items():
        if key in SWEPT:
            raise InvalidSpecError(f"{key!r} is swept, not a base field: set it with the top-level {key if key != 'seed' else 'seeds'} key")
        if key not in names:
            raise InvalidSpecError(f"unknown run config field {key!r}; known: {', '.join(sorted(names - set(SWEPT)))}")
        if isinstance(value, list):
            parsed = tuple(_field(key, v, from_text) for v in value)
            if not parsed:
                raise InvalidSpecError(f"axis {key!r} has no values")
            axes.append((key, parsed))
        else:
            changes[key] = _field(key, value, from_text)
    return dataclasses.replace(base, **changes), tuple(axes)


def _field(key: str, value: Any, from_text: bool) -> Any:
    """One base field value: CLI text parsed by the field's type, or a TOML value coerced like JSON."""
    if from_text:
        return parse_field_value(key, str(value))
    return getattr(RunConfig.from_dict({key: value}), key)


def spec_from_dict(data: Mapping[str, Any]) -> SweepSpec:
    """A spec from the parsed TOML shape (see the module docstring)."""
    from gammadb.runners.presets import preset  # imports this module

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise InvalidSpecError(f"unknown sweep key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    start = preset(str(data["preset"])) if "preset" in data else None
    base_table = data.get("base", {})
    if not isinstance(base_table, Mapping):
        raise InvalidSpecError("[base] must be a table of run config fields")
    base, axes = _base_and_axes(start.base if start else RunConfig(), base_table, from_text=False)
    if start:
        # A base key given in the file replaces the preset's axis of that name (single value or list).
        axes = tuple((k, v) for k, v in start.axes if k not in base_table) + axes
    if "steps" in data:
        base = dataclasses.replace(base, steps=_field("steps", data["steps"], False))
    name = data.get("name", start.name if start else "")
    if "gamma" not in data and start is None:
        raise InvalidSpecError("the sweep has no gamma grid: set gamma = \"lo:hi:n\" or a list")
    if "eta" not in data and start is None:
        raise InvalidSpecError("the sweep has no eta grid: set eta = \"lo:hi:n\" or a list")
    spec = SweepSpec(
        name=str(name),
        base=base,
        gammas=parse_grid(data["gamma"], label="gamma") if "gamma" in data else start.gammas,  # type: ignore[union-attr]
        etas=parse_grid(data["eta"], label="eta") if "eta" in data else start.etas,  # type: ignore[union-attr]
        seeds=parse_seeds(data["seeds"]) if "seeds" in data else (start.seeds if start else (0,)),
        axes=axes,
        adaptive=_bool("adaptive", data["adaptive"]) if "adaptive" in data else (start.adaptive if start else False),
        decades_below=_number("decades_below", data["decades_below"]) if "decades_below" in data else (start.decades_below if start else 3.0),
        ensemble=data["ensemble"] if "ensemble" in data else (start.ensemble if start else 1),
        description=str(data.get("description", start.description if start else "")),
    )
    return spec.validate()


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise InvalidSpecError(f"{key} must be true or false, got {value!r}")


def _number(key: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise InvalidSpecError(f"{key} must be a number, got {value!r}") from None


def spec_from_toml(text: str) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSpecError(f"sweep spec is not valid TOML: {exc}") from None
    return spec_from_dict(data)


def load_spec(path: str | Path) -> SweepSpec:
    """Read a TOML sweep spec; NotFoundError if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"sweep spec {path} not found: check the path")
    return spec_from_toml(path.read_text())


def spec_from_flags(
    *,
    preset_name: str | None = None,
    name: str | None = None,
    gamma: str | None = None,
    eta: str | None = None,
    seeds: str | None = None,
    steps: str | int | None = None,
    adaptive: bool | None = None,
    decades_below: float | None = None,
    set_fields: Sequence[str] = (),
) -> SweepSpec:
    """A spec from CLI flag values: start from ``preset_name`` (default 'quick'), override the rest.

    ``set_fields`` are 'field=value' strings for base fields ('width=256'); 'depth=2,3,4' (commas)
    makes the field a swept axis.
    """
    from gammadb.runners.presets import preset  # imports this module

    start = preset(preset_name or "quick")
    overrides: dict[str, Any] = {}
    for item in set_fields:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpecError(f"--set {item!r}: write field=value, e.g. width=256")
        key = key.strip()
        overrides[key] = [v for v in value.split(",")] if "," in value else value
    base, axes = _base_and_axes(start.base, overrides, from_text=True)
    axes = tuple((k, v) for k, v in start.axes if k not in overrides) + axes
    if steps is not None:
        base = dataclasses.replace(base, steps=parse_field_value("steps", str(steps)))
    spec = SweepSpec(
        name=name or start.name,
        base=base,
        gammas=parse_grid(gamma, label="gamma") if gamma is not None else start.gammas,
        etas=parse_grid(eta, label="eta") if eta is not None else start.etas,
        seeds=parse_seeds(seeds) if seeds is not None else start.seeds,
        axes=axes,
        adaptive=start.adaptive if adaptive is None else adaptive,
        decades_below=start.decades_below if decades_below is None else decades_below,
        ensemble=start.ensemble,
        description=start.description,
    )
    return spec.validate()
