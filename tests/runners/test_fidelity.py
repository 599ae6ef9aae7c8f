"""Fidelity to the authors' code (Pehlevan-Group/Richness_Sweep), as docs/fidelity.md tabulates it.

Each test pins one row of that table, so a choice that drifts fails here: the networks against
reference forward passes written below from the formulas (not from gammadb's modules), in float64;
the MNIST-1M and CIFAR-5M loaders on small files written in the authors' layout; the test metric;
the evaluation times; and both file tasks end to end through ``gammadb run``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.errors import InvalidSpecError
from gammadb.metrics import DATA_PASSES, LOSS, TEST_ACCURACY, TEST_LOSS
from gammadb.runners.config import RunConfig, cadence_steps, log_times
from gammadb.runners.data import DataStream, make_task
from gammadb.runners.ensemble import train_ensemble
from gammadb.runners.models import build_model, build_net, build_optimizer, make_loss, make_test_loss
from gammadb.runners.plan import run_spec
from gammadb.runners.train import ListSink, train
from gammadb.store import Store

# The authors' constants, written out here so that a change in gammadb has to change this file too.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # data_loaders.load_file_MNIST_1M
CIFAR_MEAN = (121.4, 119.3, 109.83)  # data_loaders.load_file_CIFAR_5M, on 0..255
CIFAR_STD = (63.1, 62.1, 66.6)
P_TEST = 5000  # vision_tasks.py


# ===== Reference networks, from the formulas =======================================================


class _Params(dict):
    """A network's parameters by name; remembers which were read, so a reference can assert that it
    used every parameter of gammadb's network (no extra layer) and found every one it needed."""

    def __init__(self, named: dict[str, torch.Tensor]):
        super().__init__(named)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.read.add(name)
        return super().__getitem__(name)


def _dense(h: torch.Tensor, p: _Params, name: str) -> torch.Tensor:
    """StdLinear: (h W^T + b) / sqrt(fan_in)."""
    return (h @ p[name + ".weight"].t() + p[name + ".bias"]) / math.sqrt(h.shape[-1])


def _readout(h: torch.Tensor, p: _Params) -> torch.Tensor:
    """FinalLinear: (h W^T + b) / fan_in."""
    return (h @ p["readout.weight"].t() + p["readout.bias"]) / h.shape[-1]


def _conv(x: torch.Tensor, p: _Params, name: str, *, bias: bool = True, stride: int = 1, padding: int = 0,
          fan_in: bool = False) -> torch.Tensor:
    """StdConv2d: conv(x, W) / sqrt(C_in); with ``fan_in`` / sqrt(C_in k^2) (gammadb's option)."""
    w = p[name + ".weight"]
    scale = x.shape[1] * (w.shape[-1] ** 2 if fan_in else 1)
    return F.conv2d(x, w, p[name + ".bias"] if bias else None, stride, padding) / math.sqrt(scale)


def _bn(x: torch.Tensor, p: _Params, name: str) -> torch.Tensor:
    """BatchNorm2d in training mode: batch statistics, eps 1e-5, learned scale and shift."""
    return F.batch_norm(x, None, None, p[name + ".weight"], p[name + ".bias"], training=True, eps=1e-5)


def ref_mlp(p: _Params, x: torch.Tensor, config: RunConfig) -> torch.Tensor:
    h = x.flatten(1)
    for layer in range(config.depth - 1):
        h = torch.relu(_dense(h, p, f"hidden.{layer}"))
    return _readout(h, p)


def ref_cnn(p: _Params, x: torch.Tensor, config: RunConfig) -> torch.Tensor:
    fan_in = config.conv_scale == "fan_in"
    n = config.width
    assert p["conv1.weight"].shape[:2] == (n, x.shape[1]) and p["conv2.weight"].shape[:2] == (2 * n, n)
    h = F.avg_pool2d(torch.relu(_conv(x, p, "conv1", fan_in=fan_in)), 2, 2)
    h = F.avg_pool2d(torch.relu(_conv(h, p, "conv2", fan_in=fan_in)), 2, 2)
    h = torch.relu(_dense(h.flatten(1), p, "dense"))
    assert h.shape[1] == 8 * n
    return _readout(h, p)


def ref_resnet18(p: _Params, x: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """ResNet-18: BasicBlock, [2, 2, 2, 2], widths [64, 128, 256, 512] x N/64, 4x4 average pool."""
    widths = [int(w * config.width / 64) for w in (64, 128, 256, 512)]
    h = torch.relu(_bn(_conv(x, p, "stem", bias=False, padding=1), p, "bn"))
    block = 0
    for stage, width in enumerate(widths):
        for j in range(2):
            stride = 2 if stage > 0 and j == 0 else 1
            name = f"blocks.{block}."
            assert p[name + "conv1.weight"].shape[:2] == (width, h.shape[1])
            out = torch.relu(_bn(_conv(h, p, name + "conv1", bias=False, stride=stride, padding=1), p, name + "bn1"))
            out = _bn(_conv(out, p, name + "conv2", bias=False, padding=1), p, name + "bn2")
            if stride != 1 or h.shape[1] != width:
                short = _bn(_conv(h, p, name + "shortcut.0", bias=False, stride=stride), p, name + "shortcut.1")
            else:
                short = h
            h = torch.relu(out + short)
            block += 1
    return _readout(F.avg_pool2d(h, 4).flatten(1), p)


Reference = Callable[[_Params, torch.Tensor, RunConfig], torch.Tensor]

NETWORKS: dict[str, tuple[RunConfig, Reference]] = {
    "mlp": (RunConfig(model="mlp", task="gmm", input_dim=12, out_dim=4, depth=3, width=16), ref_mlp),
    "cnn": (RunConfig(model="cnn", task="mnist1m", depth=4, width=3), ref_cnn),
    "resnet18": (RunConfig(model="resnet", task="mnist1m", depth=18, width=2), ref_resnet18),
}
# Per gamma, an eta at which the 20 steps move the loss without diverging (eta* ~ gamma^2 at small
# gamma; at gamma = 1e3 the loss sits on its plateau, and the trajectory is compared all the same).
ETAS = {1e-3: 1e-6, 1.0: 0.5, 1e3: 10.0}


def _batches(config: RunConfig, count: int, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    shape = config.image_shape or (config.resolved_input_dim,)
    out = []
    for _ in range(count):
        x = torch.randn(size, *shape, generator=g, dtype=torch.float64)
        labels = torch.randint(0, config.resolved_out_dim, (size,), generator=g)
        out.append((x, F.one_hot(labels, config.resolved_out_dim).double()))
    return out


def _params(net: torch.nn.Module) -> _Params:
    return _Params({k: v.detach().clone() for k, v in net.named_parameters()})


@pytest.mark.parametrize("name", list(NETWORKS))
def test_raw_output_equals_the_reference(name: str) -> None:
    config, reference = NETWORKS[name]
    config = config.replace(dtype="float64")
    net = build_net(config).double()
    p = _params(net)
    x = _batches(config, 1, size=6)[0][0]
    expected = reference(p, x, config)
    assert p.read == set(p), f"gammadb's {name} has parameters the reference does not use: {set(p) - p.read}"
    got = net(x)
    assert float(got.detach().abs().max()) > 1e-3  # a real output, not zeros
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", list(ETAS), ids=["gamma1e-3", "gamma1", "gamma1e3"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_twenty_sgd_steps_follow_the_reference(name: str, gamma: float) -> None:
    """The centered, gamma-divided model trained by plain SGD at lr = N eta on MSE (mean over batch and
    outputs), gammadb's against the reference's: the same losses to 1e-10 at every step."""
    config, reference = NETWORKS[name]
    config = config.replace(gamma=gamma, eta=ETAS[gamma], dtype="float64")
    model = build_model(config)
    optimizer, loss_fn = build_optimizer(config, model), make_loss(config)
    theta = {k: v.clone().requires_grad_(True) for k, v in _params(model.net).items()}
    theta0 = _params(model.init_net)
    lr = config.width * config.eta

    def f(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f0 = reference(_Params(theta0), x, config)
        return (reference(_Params(theta), x, config) - f0) / gamma

    ours, theirs = [], []
    for x, y in _batches(config, 20):
        loss = loss_fn(model(x), y, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.append(loss.item())
        ref_loss = ((f(x) - y) ** 2).mean()
        grads = torch.autograd.grad(ref_loss, list(theta.values()))
        with torch.no_grad():
            for t, g in zip(theta.values(), grads):
                t -= lr * g
        theirs.append(ref_loss.item())
    assert all(math.isfinite(v) for v in ours)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=0)
    if gamma <= 1.0:
        assert ours[-1] < 0.995 * ours[0]  # it trained: the comparison is not of a frozen model
    x = _batches(config, 1, size=6)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), f(x), rtol=1e-7, atol=1e-9 * float(f(x).abs().max()))


def test_cnn_conv_scale_option_and_the_nine_fold_gap() -> None:
    """conv_scale='fan_in' divides by sqrt(9 C_in): at init (zero biases, ReLU homogeneous) the raw
    output is exactly 9x smaller than with the authors' sqrt(C_in)."""
    config, _ = NETWORKS["cnn"]
    fan_in = config.replace(conv_scale="fan_in", dtype="float64")
    net = build_net(fan_in).double()
    p = _params(net)
    x = _batches(fan_in, 1, size=3)[0][0]
    torch.testing.assert_close(net(x), ref_cnn(p, x, fan_in), rtol=1e-10, atol=1e-12)
    channels = build_net(config).double()
    torch.testing.assert_close(channels(x), 9 * net(x), rtol=1e-10, atol=1e-12)
    assert config.conv_scale == "channels"
    with pytest.raises(InvalidSpecError, match="conv_scale"):
        config.replace(conv_scale="kernel").validate()  # type: ignore[arg-type]


def test_resnet18_is_the_authors_size_and_depth_rule() -> None:
    net = build_net(RunConfig(model="resnet", task="cifar5m", depth=18, width=16))
    assert sum(p.numel() for p in net.parameters()) == 701_466  # ResNet-18 at wm = 16/64
    assert sum(p.numel() for p in build_net(RunConfig(model="resnet", task="cifar5m", depth=34, width=16)).parameters()) == 1_334_618
    with pytest.raises(InvalidSpecError, match="depth 18 or 34"):
        RunConfig(model="resnet", task="cifar5m", depth=10).validate(check_files=False)


def test_new_fields_at_their_default_keep_stored_configs_and_point_keys() -> None:
    """A config stored before conv_scale / test_reduction existed loads to the same dict, so its
    point key (the store's identity of a run) is unchanged; a non-default value is written out."""
    old = {"model": "mlp", "task": "teacher", "loss_fn": "mse", "optimizer": "sgd", "depth": 3, "width": 64,
           "batch_size": 32, "gamma": 1.0, "eta": 0.1, "seed": 0, "steps": 500, "dtype": "auto", "input_dim": None,
           "out_dim": None, "data_dir": None, "data_seed": 0, "cadence": "log", "probe_size": 32, "test_size": 500,
           "sharpness_size": 64, "feature_alignment": True, "ntk": True, "sharpness": True, "sharpness_iters": 10}
    config = RunConfig.from_dict(old)
    assert config.to_dict() == old
    spec = run_spec(config)
    assert spec.point_key() == dataclasses.replace(spec, config=old).point_key()
    assert config.replace(test_reduction="mean").to_dict()["test_reduction"] == "mean"
    assert run_spec(config.replace(conv_scale="fan_in")).point_key() != spec.point_key()


# ===== Data: the authors' loaders ====================================================================


def _write_cifar(root: Path, sizes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """cifar5m_part{i}.npz as the public release: X (n, 32, 32, 3) uint8, Y (n,); pixel (0, 0, 0)
    of each image is a tag (part i: 50 i + row)."""
    rng = np.random.default_rng(0)
    parts = []
    for i, n in enumerate(sizes):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        x[:, 0, 0, 0] = 50 * i + np.arange(n)
        y = rng.integers(0, 10, n)
        np.savez(root / f"cifar5m_part{i}.npz", X=x, Y=y)
        parts.append((x, y))
    (root / "CIFAR").mkdir()
    test = ((rng.random((12, 3, 32, 32)) - 0.5) * 4).astype(np.float32)  # stored normalised, as the authors'
    torch.save(torch.from_numpy(test), root / "CIFAR" / "test_data.pt")
    torch.save(torch.from_numpy(rng.integers(0, 10, 12)), root / "CIFAR" / "test_labels.pt")
    return parts


def _write_mnist(root: Path, sizes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """MNIST_images_{i}.npz (arr_0: (n, 1, 28, 28) float32, as the authors' generator writes) and the
    labels as the generator names them (MNIST_labels_{i}.npz.npy) or as their loader reads them."""
    rng = np.random.default_rng(1)
    chunks = []
    for i, n in enumerate(sizes):
        x = rng.random((n, 1, 28, 28)).astype(np.float32)
        x[:, 0, 0, 0] = (100 * i + np.arange(n)) / 1000  # tag
        y = rng.integers(0, 10, n)
        np.savez(root / f"MNIST_images_{i}.npz", x)
        np.save(root / (f"MNIST_labels_{i}.npz" if i % 2 else f"MNIST_labels_{i}.npy"), y)
        chunks.append((x, y))
    (root / "MNIST").mkdir()
    test = ((rng.random((15, 28, 28)) - MNIST_MEAN) / MNIST_STD).astype(np.float32)  # stored normalised
    torch.save(torch.from_numpy(test), root / "MNIST" / "test_data.pt")
    torch.save(torch.from_numpy(rng.integers(0, 10, 15)), root / "MNIST" / "test_labels.pt")
    return chunks


def test_cifar5m_batches_one_part_at_a_time_and_normalises_by_the_authors_constants(tmp_path: Path) -> None:
    parts = _write_cifar(tmp_path, (10, 13))
    config = RunConfig(task="cifar5m", data_dir=str(tmp_path), batch_size=4).validate()
    task = make_task(config)
    assert task.batches_per_pass == 10 // 4 + 13 // 4 == 5
    # Part 0: rows 0-3, 4-7 (8, 9 dropped); part 1: rows 0-3, 4-7, 8-11 (12 dropped); then again.
    plan = [(0, 0), (0, 4), (1, 0), (1, 4), (1, 8)]
    stream = DataStream(task)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    for part, row in plan + plan[:2]:
        batch = next(stream)
        x, y = parts[part][0][row: row + 4], parts[part][1][row: row + 4]
        expected = (torch.from_numpy(x.transpose(0, 3, 1, 2)).float() - mean) / std
        torch.testing.assert_close(batch.x, expected, rtol=0, atol=1e-6)
        assert batch.labels is not None and batch.labels.tolist() == y.tolist()
        assert torch.equal(batch.y, F.one_hot(batch.labels, 10).float())
    assert stream.data_passes() == pytest.approx(7 / 5)
    # The real test set's file is used as stored (the authors normalise nothing they read from it).
    stored = torch.load(tmp_path / "CIFAR" / "test_data.pt")
    assert torch.equal(task.test_set().x, stored) and len(task.test_set()) == 12


def test_mnist1m_is_one_stream_across_files_normalised_always(tmp_path: Path) -> None:
    chunks = _write_mnist(tmp_path, (7, 6))
    config = RunConfig(task="mnist1m", data_dir=str(tmp_path), batch_size=4).validate()
    task = make_task(config)
    assert task.batches_per_pass == 13 // 4 == 3  # the files concatenated; the 13th example is dropped
    images = np.concatenate([x for x, _ in chunks])
    labels = np.concatenate([y for _, y in chunks])
    for k in range(4):  # batch 1 spans the two files; batch 3 starts the next pass
        row = 4 * (k % 3)
        batch = task.batch(k)
        expected = (torch.from_numpy(images[row: row + 4]) - MNIST_MEAN) / MNIST_STD
        torch.testing.assert_close(batch.x, expected, rtol=0, atol=1e-6)
        assert batch.labels is not None and batch.labels.tolist() == labels[row: row + 4].tolist()
    stored = torch.load(tmp_path / "MNIST" / "test_data.pt")
    assert torch.equal(task.test_set().x, stored.reshape(-1, 1, 28, 28))


@pytest.mark.parametrize("outlier", [2.0, -0.5, 300.0], ids=["above-1.5", "below-minus-0.3", "like-0-255"])
def test_mnist1m_one_outlier_pixel_changes_nothing_else(tmp_path: Path, outlier: float) -> None:
    """Generated digits can overshoot [0, 1]: the normalisation is the same fixed map for every batch,
    whatever one pixel holds (the authors apply (x - 0.1307) / 0.3081 to the stored values)."""
    x = np.random.default_rng(2).random((8, 1, 28, 28)).astype(np.float32)
    x[3, 0, 5, 5] = outlier
    np.savez(tmp_path / "MNIST_images_0.npz", x)
    np.save(tmp_path / "MNIST_labels_0.npy", np.arange(8) % 10)
    (tmp_path / "MNIST").mkdir()
    torch.save(torch.zeros(2, 28, 28), tmp_path / "MNIST" / "test_data.pt")
    torch.save(torch.zeros(2, dtype=torch.int64), tmp_path / "MNIST" / "test_labels.pt")
    batch = make_task(RunConfig(task="mnist1m", data_dir=str(tmp_path), batch_size=8)).batch(0)
    torch.testing.assert_close(batch.x, (torch.from_numpy(x) - MNIST_MEAN) / MNIST_STD, rtol=0, atol=1e-5)


# ===== Test metric and evaluation times ===============================================================


def test_test_loss_sums_over_outputs_and_averages_over_5000_points() -> None:
    assert RunConfig().test_size == P_TEST
    config = RunConfig(task="gmm", out_dim=4, input_dim=8, depth=2, width=8, steps=2, cadence="log", probe_size=4,
                       sharpness=False, ntk=False, feature_alignment=False)
    assert len(make_task(config).test_set()) == P_TEST
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,), generator=g)
    # MSELoss(reduction='sum') / number of points; cross-entropy: the mean over points either way.
    assert float(make_test_loss(config)(out, y, labels)) == pytest.approx(float(((out - y) ** 2).sum() / 7), rel=1e-14)
    mean = config.replace(test_reduction="mean")
    assert float(make_test_loss(mean)(out, y, labels)) == pytest.approx(float(((out - y) ** 2).mean()), rel=1e-14)
    xent = config.replace(loss_fn="xent")
    assert float(make_test_loss(xent)(out, y, labels)) == pytest.approx(float(F.cross_entropy(out, labels)), rel=1e-14)
    # The factor that puts a test loss on the training loss's scale (torch-free, for analysis).
    assert (config.test_loss_scale, mean.test_loss_scale, xent.test_loss_scale) == (4.0, 1.0, 1.0)
    # Through the trainer: at theta_0 f = 0, so the test loss is the mean over points of |y|^2 = 1
    # (one-hot), against the training loss's 1/4 (the mean over the 4 outputs).
    for reduction, expected in (("sum", 1.0), ("mean", 0.25)):
        sink = ListSink()
        train(config.replace(test_reduction=reduction), sink, device="cpu")
        assert sink.series(TEST_LOSS)[0] == (1, pytest.approx(expected, rel=1e-6))


def test_evaluation_times_are_the_authors() -> None:
    assert log_times(60) == [0, 1, 2, 5, 10, 20, 50]  # utils.generate_logspace below T
    assert {t for t in range(1, 61) if t in cadence_steps("log", 60)} == {1, 2, 3, 6, 11, 21, 51, 60}


def _small(**changes: object) -> RunConfig:
    return RunConfig(task="gmm", out_dim=3, input_dim=6, depth=3, width=8, batch_size=8, eta=0.5, dtype="float64",
                     probe_size=4, test_size=64, sharpness=False, ntk=False, feature_alignment=False).replace(**changes)


def test_the_logged_times_are_theta_t_and_the_last_is_after_the_final_update() -> None:
    """A 12-step run logs TEST_LOSS at steps 1, 2, 3, 6, 11 (theta_0, 1, 2, 5, 10) and 12 (theta_12).
    Each equals the final value of a run stopped after that many updates, and theta_12 is what an
    'every' run measures before its 13th update."""
    long = ListSink()
    train(_small(steps=12), long, device="cpu")
    series = dict(long.series(TEST_LOSS))
    assert list(series) == [1, 2, 3, 6, 11, 12]
    for t in (1, 2, 5, 10):
        short = ListSink()
        train(_small(steps=t), short, device="cpu")
        assert short.series(TEST_LOSS)[-1] == (t, series[t + 1])
    every = ListSink()
    train(_small(steps=14, cadence="every"), every, device="cpu")
    assert dict(every.series(TEST_LOSS))[13] == series[12]
    assert dict(every.series(TEST_LOSS))[14] != dict(every.series(TEST_LOSS))[13]


def test_the_ensemble_logs_the_same_times_and_metric() -> None:
    configs = [_small(steps=12, gamma=g, eta=e) for g, e in ((1.0, 0.5), (0.1, 0.05))]
    sinks = [ListSink(), ListSink()]
    train_ensemble(configs, sinks, device="cpu")
    for config, sink in zip(configs, sinks):
        solo = ListSink()
        train(config, solo, device="cpu")
        assert [s for s, _ in sink.series(TEST_LOSS)] == [1, 2, 3, 6, 11, 12]
        assert sink.series(TEST_LOSS)[0][1] == pytest.approx(1.0, rel=1e-12)  # summed over outputs at f = 0
        np.testing.assert_allclose(sink.values(TEST_LOSS), solo.values(TEST_LOSS), rtol=1e-10)


# ===== End to end through `gammadb run` ================================================================


def _run_cli(url: str, name: str, data_dir: Path, *args: str) -> None:
    r = CliRunner().invoke(app, ["run", "--url", url, "--name", name, "--data-dir", str(data_dir), "--gamma", "1",
                                 "--eta", "0.05", "--seeds", "1", "--quiet", "--set", "probe_size=4", "--set", "sharpness_size=4",
                                 "--set", "sharpness_iters=2", *args])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("task", "model", "batch", "passes"), [
    ("mnist1m", "mlp", 16, (40 + 30) // 16),
    ("cifar5m", "cnn", 8, 40 // 8 + 30 // 8),
], ids=["mnist1m-mlp", "cifar5m-cnn"])
def test_file_tasks_end_to_end(sqlite_url: str, tmp_path: Path, task: str, model: str, batch: int, passes: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (_write_mnist if task == "mnist1m" else _write_cifar)(data, (40, 30))
    depth = "4" if model == "cnn" else "3"
    _run_cli(sqlite_url, task, data, "--task", task, "--model", model, "--depth", depth, "--width", "2",
             "--batch-size", str(batch), "--steps", "6")
    with Store.open(sqlite_url) as store:
        (run,) = store.runs(sweep=task)
        assert run.status.value == "completed" and run.steps_done == 6 and run.dataset == task
        frame = store.series([run.id], metrics=[LOSS, TEST_LOSS, TEST_ACCURACY, DATA_PASSES])
    values = {(m, s): v for m, s, v in frame.select("metric", "step", "value").iter_rows()}
    assert sorted(s for m, s in values if m == TEST_LOSS) == [1, 2, 3, 6]  # theta_0, 1, 2 and theta_6
    assert values[(TEST_LOSS, 1)] == pytest.approx(1.0, rel=1e-6)  # f = 0: |one-hot|^2 summed over outputs
    assert values[(LOSS, 1)] == pytest.approx(0.1, rel=1e-6)  # the training loss: the mean over 10 outputs
    assert values[(DATA_PASSES, 6)] == pytest.approx(6 / passes)  # measured after the 6th batch
    assert 0 <= values[(TEST_ACCURACY, 6)] <= 1
