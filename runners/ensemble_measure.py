"""Per-member measurements of a stacked ensemble: every metric ``train`` logs, for each member.

``EnsembleMeasures`` is the measuring half of ``gammadb.runners.ensemble_model.EnsembleModel`` (a
mixin: it reads the model's stack, members and centered output). Per step, without a host sync:
WEIGHT_CHANGE per layer and FEATURE_ALIGNMENT, computed on the stack. On the cadence: TEST_LOSS and
TEST_ACCURACY on the stacked model (the criterion of ``gammadb.runners.models.make_test_loss``),
DATA_PASSES; SHARPNESS on CUDA by one batched Lanczos on the stacked model
(``gammadb.runners.measure.top_hessian_eigenvalues``: one Hessian-vector product serves all members,
each member's start vector drawn as its solo run draws it), on the CPU member by member; NTK_ALIGNMENT
and NTK_DISTANCE member by member on a scratch solo model loaded with the member's weights (the same
code as ``train``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gammadb.metrics import (
    DATA_PASSES,
    NTK_ALIGNMENT,
    NTK_DISTANCE,
    SHARPNESS,
    TEST_ACCURACY,
    TEST_LOSS,
    MetricKey,
)
from gammadb.runners.config import RunConfig
from gammadb.runners.data import Batch, DataStream, Task, mix_seed
from gammadb.runners.measure import TargetKernel, empirical_ntk, top_hessian_eigenvalue, top_hessian_eigenvalues
from gammadb.runners.models import Centered, make_loss, make_test_loss
from gammadb.runners.stacked import Stack, member_norms


class EnsembleMeasures:
    """The metrics of every member of an ``EnsembleModel``, in stack order."""

    # Set by EnsembleModel before ``_init_measures``.
    configs: list[RunConfig]
    config: RunConfig
    members: list[int]  # stack position -> index into configs
    stack: Stack

    def output(self, x: Tensor) -> Tensor:
        """The centered outputs of every member, (K, B, C) (EnsembleModel's)."""
        raise NotImplementedError

    def losses(self, batch: Batch) -> Tensor:
        """(K,) the training loss of every member on ``batch`` (EnsembleModel's)."""
        raise NotImplementedError

    def _scratch(self) -> Centered:
        """A solo model of the ensemble's config to load members into (EnsembleModel's)."""
        raise NotImplementedError

    def _init_measures(self, task: Task, device: torch.device, dtype: torch.dtype,
                       batched_sharpness: bool | None) -> None:
        # One Lanczos for all members on CUDA (one kernel sequence instead of K); member by member on
        # the CPU, where it measured faster at width 256 (0.72-0.76x batched) though slower at width
        # 64 (1.36-1.44x batched; benchmarks/bench_ensemble_sharpness.py).
        self.batched_sharpness = device.type == "cuda" if batched_sharpness is None else batched_sharpness
        self.probe = task.probe().to(device, dtype)
        self.kernels = len(self.probe) >= 2  # a centered kernel of one example is zero
        self.target = TargetKernel(self.probe.y) if self.kernels else None
        self.test = task.test_set().to(device, dtype)
        self.sharp = task.sharpness_batch().to(device, dtype)
        self.test_loss_fn = make_test_loss(self.config, stacked=True)
        self.ntk_init: dict[int, Tensor] = {}
        self._reset_measures()

    def _reset_measures(self) -> None:
        """Forget what was derived from theta_0 (the stack's initial weights were replaced)."""
        self.init_norms = torch.stack([member_norms(w) for w in self.stack.init_weights])  # (L, K)
        self.ntk_init.clear()

    def _select_measures(self, index: Tensor) -> None:
        """Keep the members at stack positions ``index`` (as ``Stack.select``)."""
        self.init_norms = self.init_norms.index_select(1, index)

    # ----- per-step metrics (no host sync) ----------------------------------------------------
    def weight_change(self) -> Tensor:
        """(K, L): ||W_l - W_l(0)||_F / ||W_l(0)||_F of each member and layer."""
        diffs = torch._foreach_sub(self.stack.weights, self.stack.init_weights)
        return (torch.stack([member_norms(d) for d in diffs]) / self.init_norms).t()

    def feature_alignment(self) -> Tensor:
        """(K,): centered alignment of each member's probe feature kernel with the target kernel."""
        assert self.target is not None
        phi = self.stack.features(self.probe.x)
        phi = phi - phi.mean(dim=1, keepdim=True)
        k = torch.bmm(phi, phi.transpose(1, 2))
        return (k * self.target.centered).sum(dim=(1, 2)) / (torch.linalg.matrix_norm(k) * self.target.norm)

    # ----- cadence metrics (host floats) ------------------------------------------------------
    def cadence(self, step: int, stream: DataStream) -> list[dict[MetricKey, float]]:
        """Cadence metrics of theta_{step-1} for every member, in stack order."""
        c = self.config
        test_losses, accuracies = self._evaluate()
        sharpness = None
        if c.sharpness:
            sharpness = self._sharpness(step) if self.batched_sharpness else \
                [self._sharpness_of(j, step) for j in range(len(self.members))]
        records: list[dict[MetricKey, float]] = []
        passes = stream.data_passes()
        for j, i in enumerate(self.members):
            values = {MetricKey(TEST_LOSS): test_losses[j]}
            if accuracies is not None:
                values[MetricKey(TEST_ACCURACY)] = accuracies[j]
            if c.ntk and self.kernels:
                solo = self._scratch()
                self.stack.load_member(j, solo.net, solo.init_net)
                values.update(self._ntk(i, solo))
            if sharpness is not None:
                values[MetricKey(SHARPNESS)] = sharpness[j]
            if passes is not None:
                values[MetricKey(DATA_PASSES)] = passes
            records.append(values)
        return records

    @torch.no_grad()
    def _evaluate(self, chunk: int = 1000) -> tuple[list[float], list[float] | None]:
        """Per member, as ``gammadb.runners.measure.evaluate`` with the test criterion of
        ``gammadb.runners.models.make_test_loss``: (mean test loss, accuracy or None)."""
        x, y, labels = self.test
        n = x.shape[0]
        total = torch.zeros(len(self.members), dtype=torch.float64, device=x.device)
        hits = torch.zeros(len(self.members), dtype=torch.int64, device=x.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            out = self.output(x[start:stop])
            part = None if labels is None else labels[start:stop]
            losses = self.test_loss_fn(out, y[start:stop], part)
            total += losses.to(torch.float64) * (stop - start)
            if part is not None:
                hits += (out.argmax(dim=2) == part).sum(dim=1)
        accuracy = None if labels is None else [h / n for h in hits.tolist()]
        return [t / n for t in total.tolist()], accuracy

    def _ntk(self, i: int, solo: Centered) -> dict[MetricKey, float]:
        """NTK metrics of member ``i``, loaded into ``solo``."""
        assert self.target is not None
        x = self.probe.x
        if i not in self.ntk_init:
            theta0 = {k: v.detach() for k, v in solo.init_net.named_parameters()}
            self.ntk_init[i] = empirical_ntk(solo.init_net, x, theta0)
        init = self.ntk_init[i]
        kernel = empirical_ntk(solo.net, x)
        distance = torch.linalg.matrix_norm(kernel - init) / torch.linalg.matrix_norm(init)
        return {
            MetricKey(NTK_ALIGNMENT): float(self.target.alignment_of_kernel(kernel)),
            MetricKey(NTK_DISTANCE): float(distance),
        }

    def _sharpness_of(self, j: int, step: int) -> float:
        """SHARPNESS of the member at stack position ``j`` alone, on the solo model (as ``train``)."""
        solo, batch, config = self._scratch(), self.sharp, self.configs[self.members[j]]
        self.stack.load_member(j, solo.net, solo.init_net)
        solo.gamma = float(config.gamma)
        loss_fn = make_loss(config)
        generator = torch.Generator().manual_seed(mix_seed(config.seed, step))
        return top_hessian_eigenvalue(lambda: loss_fn(solo(batch.x), batch.y, batch.labels),
                                      solo.trainable_parameters(), iters=config.sharpness_iters, generator=generator)

    def _sharpness(self, step: int) -> list[float]:
        """SHARPNESS of every member (stack order): one batched Lanczos on the stacked model. Each
        member's start vector is drawn exactly as its solo run draws it (same generator, same order,
        in the solo layout), so the values equal the solo ones to rounding."""
        batch = self.sharp
        solo = dict(self._scratch().net.named_parameters())
        start = [torch.empty_like(p) for p in self.stack.params]
        for j, i in enumerate(self.members):
            generator = torch.Generator().manual_seed(mix_seed(self.configs[i].seed, step))
            drawn = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype)
                     for name, p in solo.items() if p.requires_grad}
            for slot, name, t in zip(start, self.stack.solo_names, self.stack.transposed):
                slot[j].copy_(drawn[name].transpose(-1, -2) if t else drawn[name])
        return top_hessian_eigenvalues(lambda: self.losses(batch).sum(), self.stack.params, start,
                                       iters=self.config.sharpness_iters)
