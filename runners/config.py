"""RunConfig: the one frozen, typed description of a training run.

It is stored verbatim (``to_json``) with the run and inside every checkpoint, and it is torch-free
so that the CLI and the store can build and validate configs without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args

from gammadb.errors import InvalidSpecError
from gammadb.runners import datafiles  # torch-free

ModelName = Literal["mlp", "cnn", "resnet", "vit", "toy"]
TaskName = Literal["teacher", "teacher_cls", "staircase", "gmm", "mnist5k", "mnist1m", "cifar5m", "toy"]
LossName = Literal["mse", "xent"]
OptimizerName = Literal["sgd", "signsgd", "adam"]
DtypeName = Literal["auto", "float32", "float64"]
ConvScale = Literal["channels", "fan_in"]
TestReduction = Literal["sum", "mean"]

MODELS: tuple[str, ...] = get_args(ModelName)
TASKS: tuple[str, ...] = get_args(TaskName)
LOSSES: tuple[str, ...] = get_args(LossName)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
DTYPES: tuple[str, ...] = get_args(DtypeName)
CONV_SCALES: tuple[str, ...] = get_args(ConvScale)
TEST_REDUCTIONS: tuple[str, ...] = get_args(TestReduction)
CADENCES: tuple[str, ...] = ("log", "every", "none")

#: Below this gamma the centered output (an O(gamma) difference of O(1) numbers) cancels badly in
#: float32, so dtype='auto' trains in float64 (docs/theory.md; the authors' threshold).
FLOAT64_BELOW_GAMMA = 1e-2

#: Per task: (default input dim, default outputs, classification?). Image tasks fix input_dim.
TASK_SHAPES: dict[str, tuple[int, int, bool]] = {
    "teacher": (32, 1, False),
    "teacher_cls": (32, 2, True),
    "staircase": (32, 1, False),
    "gmm": (32, 4, True),
    "mnist5k": (784, 10, True),
    "mnist1m": (784, 10, True),
    "cifar5m": (3072, 10, True),
    "toy": (1, 1, False),
}
#: (channels, height, width) of the image tasks; the only tasks cnn/resnet/vit accept.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist5k": (1, 28, 28),
    "mnist1m": (1, 28, 28),
    "cifar5m": (3, 32, 32),
}
#: The CNN of the paper has two conv blocks, one dense layer and the readout: it counts as L = 4.
CNN_DEPTH = 4
#: model 'resnet', depth 18 or 34: the authors' ResNet-18 / ResNet-34 (their models.py), basic blocks
#: per stage. Depth 1..MAX_RESNET_STAGES: gammadb's compact variant, one basic block per stage.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
MAX_RESNET_STAGES = 4
#: The authors' test set: the first 5,000 images of the real test set (P_test in vision_tasks.py).
TEST_SIZE = 5000
#: Fields added after runs were first stored. ``to_dict`` leaves one out while it holds its default, so
#: the stored config (and the point key, a digest of it) of a run made before the field existed is
#: unchanged; ``from_dict`` fills it back in.
OMITTED_AT_DEFAULT: tuple[str, ...] = ("conv_scale", "test_reduction")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (bit-for-bit on CPU).

    Units and conventions: ``gamma`` divides the centered output; the SGD learning rate is
    ``width * eta`` (see ``gammadb.runners.models.learning_rate``); ``steps`` counts SGD updates, each on a fresh
    batch of ``batch_size`` examples. ``seed`` sets the initial weights only; the data stream is set by
    ``data_seed`` alone, so runs that differ only in ``seed`` see the same batches.

    ``cadence`` says when the cadence metrics (test loss/accuracy, NTK, sharpness, data passes) are
    measured (``cadence_steps``): 'log' = the authors' times, theta_t for t = 0, 1, 2, 5, 10, 20, 50, ...
    and after the last update; 'every'; 'none'; or an int N = every N steps plus the last. ``depth``
    is the number of weight layers L for mlp/toy, fixed at 4 for cnn, 18 or 34 for the authors'
    ResNet-18 / ResNet-34 (or 1..4: gammadb's compact one-block-per-stage resnet), the number of
    transformer blocks for vit.

    ``conv_scale`` (cnn, resnet): each convolution's output is divided by sqrt(C_in) ('channels', the
    authors' StdConv2d) or by sqrt(C_in k^2) ('fan_in': O(1) activations for any kernel size k).
    ``test_reduction``: the test loss sums the criterion over the outputs ('sum', the authors'
    test_model) or averages it ('mean': the training loss's normalisation); both average over the
    ``test_size`` test points. docs/fidelity.md lists every choice against the authors' code.
    """

    model: ModelName = "mlp"
    task: TaskName = "teacher"
    loss_fn: LossName = "mse"
    optimizer: OptimizerName = "sgd"
    depth: int = 3
    width: int = 128
    batch_size: int = 32
    gamma: float = 1.0
    eta: float = 0.1
    seed: int = 0
    steps: int = 1000
    dtype: DtypeName = "auto"
    input_dim: int | None = None  # None: the task's default (TASK_SHAPES)
    out_dim: int | None = None  # outputs = number of classes for classification tasks; None: default
    data_dir: str | None = None  # mnist1m / cifar5m only
    data_seed: int = 0
    cadence: str | int = "log"
    probe_size: int = 64  # fixed probe batch for the feature kernel and the NTK
    test_size: int = TEST_SIZE  # fixed held-out test set (capped by what a finite task has)
    sharpness_size: int = 256  # fixed batch (the head of the test set) for the Hessian
    feature_alignment: bool = True  # per-step feature-kernel alignment on the probe batch
    ntk: bool = True  # NTK alignment and distance on the cadence
    sharpness: bool = True  # top Hessian eigenvalue on the cadence
    sharpness_iters: int = 20  # at most this many Hessian-vector products (Lanczos steps) per sharpness measurement
    conv_scale: ConvScale = "channels"  # cnn/resnet conv output / sqrt(C_in) (authors') or / sqrt(C_in k^2)
    test_reduction: TestReduction = "sum"  # test loss over the outputs: summed (authors') or averaged

    def __post_init__(self) -> None:
        # Accept the CLI's string forms; keep the frozen value canonical (N as int, names lower-case).
        cadence = self.cadence
        if isinstance(cadence, str) and cadence.strip().isdigit():
            object.__setattr__(self, "cadence", int(cadence))
        elif isinstance(cadence, str):
            object.__setattr__(self, "cadence", cadence.strip().lower())

    # ----- derived values --------------------------------------------------------------------
    @property
    def resolved_dtype(self) -> Literal["float32", "float64"]:
        """The dtype the run trains in: 'auto' means float64 when gamma < 1e-2, else float32."""
        if self.dtype == "auto":
            return "float64" if self.gamma < FLOAT64_BELOW_GAMMA else "float32"
        return self.dtype  # type: ignore[return-value]

    @property
    def resolved_input_dim(self) -> int:
        return self.input_dim if self.input_dim is not None else TASK_SHAPES[self.task][0]

    @property
    def resolved_out_dim(self) -> int:
        return self.out_dim if self.out_dim is not None else TASK_SHAPES[self.task][1]

    @property
    def test_loss_scale(self) -> float:
        """TEST_LOSS / (the training criterion on the same points).

        MSE with ``test_reduction='sum'``: the number of outputs, so the test loss is the criterion summed
        over the outputs and averaged over test points (the authors' ``test_model``: ``MSELoss(reduction=
        'sum')`` / number of test points). 1 for 'mean' and for cross-entropy (one value per example).
        Divide a test loss by it to put it on the training loss's scale.
        """
        if self.loss_fn == "mse" and self.test_reduction == "sum":
            return float(self.resolved_out_dim)
        return 1.0

    @property
    def is_classification(self) -> bool:
        return TASK_SHAPES[self.task][2]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) for image tasks, else None."""
        return IMAGE_SHAPES.get(self.task)

    def cadence_steps(self) -> Container[int]:
        """The steps (1..steps) at which cadence metrics are measured (see the class docstring)."""
        return cadence_steps(self.cadence, self.steps)

    # ----- validation ------------------------------------------------------------------------
    def validate(self, *, check_files: bool = True) -> RunConfig:
        """Raise InvalidSpecError (one line, says what to do) for bad input; return self.

        With ``check_files`` the data a task reads must exist: a missing data directory or file raises
        ``gammadb.runners.datafiles.DataNotFoundError``, which is both a NotFoundError and an InvalidSpecError.
        """
        _one_of("model", self.model, MODELS)
        _one_of("task", self.task, TASKS)
        _one_of("loss_fn", self.loss_fn, LOSSES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("conv_scale", self.conv_scale, CONV_SCALES)
        _one_of("test_reduction", self.test_reduction, TEST_REDUCTIONS)
        for name in ("gamma", "eta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidSpecError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("depth", "width", "batch_size", "steps", "probe_size", "test_size", "sharpness_size"):
            _positive_int(name, getattr(self, name))
        _positive_int("sharpness_iters", self.sharpness_iters)
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise InvalidSpecError(f"{name} must be an integer >= 0, got {value!r}")
        if self.input_dim is not None:
            _positive_int("input_dim", self.input_dim)
        if self.out_dim is not None:
            _positive_int("out_dim", self.out_dim)
        if isinstance(self.cadence, int) and not isinstance(self.cadence, bool):
            _positive_int("cadence", self.cadence)
        elif self.cadence not in CADENCES:
            raise InvalidSpecError(
                f"cadence must be 'log', 'every', 'none' or a number of steps, got {self.cadence!r}"
            )
        self._validate_combination()
        if check_files:
            self._validate_files()
        return self

    def _validate_combination(self) -> None:
        classification = self.is_classification
        if self.loss_fn == "xent" and not classification:
            raise InvalidSpecError(
                f"loss_fn 'xent' needs a classification task; {self.task!r} is regression: use loss_fn 'mse'"
            )
        if classification and self.resolved_out_dim < 2:
            raise InvalidSpecError(f"task {self.task!r} needs out_dim (classes) >= 2")
        if self.task == "staircase" and self.resolved_out_dim != 1:
            raise InvalidSpecError("task 'staircase' has one output: leave out_dim unset or 1")
        if self.task == "staircase" and self.resolved_input_dim < 3:
            raise InvalidSpecError("task 'staircase' needs input_dim >= 3 (it uses x1, x2, x3)")
        image = self.image_shape
        if image is not None:
            c, h, w = image
            if self.input_dim is not None and self.input_dim != c * h * w:
                raise InvalidSpecError(
                    f"task {self.task!r} has input_dim {c * h * w}: leave input_dim unset"
                )
            if self.out_dim is not None and self.out_dim != TASK_SHAPES[self.task][1]:
                raise InvalidSpecError(f"task {self.task!r} has {TASK_SHAPES[self.task][1]} classes: leave out_dim unset")
        if (self.model == "toy") != (self.task == "toy"):
            raise InvalidSpecError("model 'toy' and task 'toy' go together: set both (or neither)")
        if self.model == "toy":
            if self.width != 1 or self.batch_size != 1:
                raise InvalidSpecError("model 'toy' is the width-1 scalar model on one example: set width=1, batch_size=1")
            if self.loss_fn != "mse":
                raise InvalidSpecError("model 'toy' is defined for loss_fn 'mse' only")
        if self.model in ("cnn", "resnet", "vit") and image is None:
            raise InvalidSpecError(
                f"model {self.model!r} needs an image task (mnist5k, mnist1m, cifar5m), got {self.task!r}"
            )
        if self.model == "mlp" and self.depth < 2:
            raise InvalidSpecError("model 'mlp' needs depth >= 2 (a hidden layer and the readout)")
        if self.model == "cnn" and self.depth != CNN_DEPTH:
            raise InvalidSpecError(f"model 'cnn' has a fixed depth of {CNN_DEPTH} (2 conv, dense, readout): set depth={CNN_DEPTH}")
        if self.model == "resnet" and self.depth > MAX_RESNET_STAGES and self.depth not in RESNET_BLOCKS:
            raise InvalidSpecError(
                "model 'resnet' takes depth 18 or 34 (the authors' ResNet-18 / ResNet-34) or "
                f"1..{MAX_RESNET_STAGES} (gammadb's compact resnet, one block per stage), got {self.depth}"
            )
        if self.model == "vit" and image is not None and (image[1] % 4 or image[2] % 4):
            raise InvalidSpecError("model 'vit' uses 4x4 patches: the image side must be a multiple of 4")
        if self.data_dir is not None and self.task not in ("mnist1m", "cifar5m"):
            raise InvalidSpecError(f"task {self.task!r} reads no data directory: drop data_dir")

    def _validate_files(self) -> None:
        if self.task in ("mnist1m", "cifar5m"):
            datafiles.locate_chunk_files(self.task, self.data_dir)
        elif self.task == "mnist5k":
            datafiles.mnist5k_path()

    # ----- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, except those of ``OMITTED_AT_DEFAULT`` that hold their default."""
        data = dataclasses.asdict(self)
        for name in OMITTED_AT_DEFAULT:
            if data[name] == _DEFAULTS[name]:
                del data[name]
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): stored verbatim with the run and in each checkpoint."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping of field values (JSON types); unknown keys raise InvalidSpecError.

        Missing keys take their defaults, so configs stored by older versions keep loading.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidSpecError(f"unknown run config field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: _coerce(k, _field_type(k), v) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSpecError(f"run config is not valid JSON ({exc.msg}): pass what to_json() wrote") from None
        if not isinstance(data, dict):
            raise InvalidSpecError("run config JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def from_strings(cls, values: Mapping[str, str], base: RunConfig | None = None) -> RunConfig:
        """Override ``base`` (default: the defaults) with CLI strings like ``{'width': '256'}``."""
        base = base or cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidSpecError(f"unknown run config field(s) {unknown}; known: {sorted(known)}")
        changes = {k: parse_field_value(k, v) for k, v in values.items()}
        return dataclasses.replace(base, **changes)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def hyper_params(self) -> dict[str, Any]:
        """The typed columns of a run row: dtype resolved, the task under its column name 'dataset'."""
        return {
            "model": self.model,
            "dataset": self.task,
            "loss_fn": self.loss_fn,
            "optimizer": self.optimizer,
            "depth": self.depth,
            "width": self.width,
            "batch_size": self.batch_size,
            "gamma": float(self.gamma),
            "eta": float(self.eta),
            "seed": self.seed,
            "dtype": self.resolved_dtype,
            "steps": self.steps,
        }


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def log_times(below: int) -> list[int]:
    """The authors' evaluation times 0, 1, 2, 5, 10, 20, 50, ... (utils.generate_logspace) below ``below``."""
    times = [0]
    scale = 1
    while scale < below:
        times.extend(m * scale for m in (1, 2, 5) if m * scale < below)
        scale *= 10
    return times


def cadence_steps(cadence: str | int, steps: int) -> Container[int]:
    """The steps (1..steps) whose records carry the cadence metrics.

    At a step t < ``steps`` they describe theta_{t-1}, measured before the t-th update (like the step's
    loss); at the last step they describe theta_T, measured after the last update (the authors'
    evaluation after training). 'log': theta_t for t in ``log_times(steps)``, i.e. steps t + 1, plus
    the last step; 'every'; 'none'; int N: steps N, 2N, ... plus the last step.
    """
    if cadence == "every":
        return range(1, steps + 1)
    if cadence == "none":
        return frozenset()
    if cadence == "log":
        return frozenset(t + 1 for t in log_times(steps)) | {steps}
    if isinstance(cadence, int) and cadence >= 1:
        return frozenset(range(cadence, steps + 1, cadence)) | {steps}
    raise InvalidSpecError(f"cadence must be 'log', 'every', 'none' or a number of steps, got {cadence!r}")


# ----- field parsing helpers (shared with gammadb.runners.spec) ----------------------------------------
_TYPE_HINTS: dict[str, Any] | None = None


def _field_type(name: str) -> Any:
    global _TYPE_HINTS
    if _TYPE_HINTS is None:
        _TYPE_HINTS = typing.get_type_hints(RunConfig)
    return _TYPE_HINTS[name]


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def parse_field_value(name: str, text: str) -> Any:
    """Parse a CLI string into the type of RunConfig field ``name`` ('none' -> None where allowed)."""
    return _coerce(name, _field_type(name), text, from_text=True)


def _coerce(name: str, hint: Any, value: Any, *, from_text: bool = False) -> Any:
    args = get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None or (from_text and isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, arg, value, from_text=from_text)
            except InvalidSpecError:
                continue
        raise InvalidSpecError(f"{name}: cannot use {value!r}")
    if origin is Literal:
        if not isinstance(value, str):
            raise InvalidSpecError(f"{name} must be one of {list(args)}, got {value!r}")
        return value.strip().lower() if from_text else value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise InvalidSpecError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if _is_int(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise InvalidSpecError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise InvalidSpecError(f"{name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise InvalidSpecError(f"{name} must be a string, got {value!r}")
    raise InvalidSpecError(f"{name}: unsupported value {value!r}")  # pragma: no cover


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise InvalidSpecError(f"{name} must be an integer >= 1, got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidSpecError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")
