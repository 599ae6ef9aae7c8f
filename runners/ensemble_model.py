"""The model an ensemble trains: K members stacked, each centered and divided by its own gamma.

``EnsembleModel`` wraps a ``gammadb.runners.stacked.Stack``: the output of member k is
``gammadb.runners.models.centered_output`` with its own gamma, its loss ``make_loss(stacked=True)``,
its learning rate ``learning_rate`` (the parameterisation is ``gammadb.runners.models``'s, read from
there). The backward pass runs on the sum of the member losses, whose gradient with respect to one
member's parameters is that member's own gradient, so a member follows the trajectory it would follow
alone (to rounding: a test holds float64 runs to 1e-10).

The SGD step is masked per member on the device: a member whose loss is not finite keeps its
parameters, and nothing non-finite reaches the others (every operation is per member: batched
matmuls and per-member reductions); ``select`` then drops it from the stack. Members convert to and
from solo checkpoints (``gammadb.runners.checkpoint``'s format) through a scratch solo model. What is
measured on the model is ``gammadb.runners.ensemble_measure``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gammadb.runners.checkpoint import CHECKPOINT_FORMAT, rng_state
from gammadb.runners.config import RunConfig
from gammadb.runners.data import Batch, DataStream, Task
from gammadb.runners.ensemble_measure import EnsembleMeasures
from gammadb.runners.models import Centered, build_model, build_optimizer, centered_output, learning_rate, make_loss
from gammadb.runners.stacked import Impl, build_stack, member_view


class EnsembleModel(EnsembleMeasures):
    """The stacked model (centered, per-member gamma and learning rate) and what is measured on it."""

    def __init__(self, configs: Sequence[RunConfig], task: Task, device: torch.device, dtype: torch.dtype, impl: Impl,
                 batched_sharpness: bool | None = None):
        self.configs = list(configs)
        self.config = configs[0]
        self.members = list(range(len(configs)))  # stack position -> index into configs
        self.stack = build_stack(configs, device, dtype, impl)
        self.gamma = torch.tensor([c.gamma for c in configs], device=device, dtype=dtype).view(-1, 1, 1)
        self.neg_lr = torch.tensor([-learning_rate(c) for c in configs], device=device, dtype=dtype)
        self.loss_fn = make_loss(self.config, stacked=True)
        self._init_measures(task, device, dtype, batched_sharpness)
        # A solo model: members are loaded into it for the NTK and converted through it to and from
        # checkpoints; the sharpness layout follows its parameter order.
        self.scratch: Centered | None = None

    def _scratch(self) -> Centered:
        if self.scratch is None:
            self.scratch = build_model(self.config.replace(seed=0), self.gamma.device)
        return self.scratch

    def member_state(self, j: int, step: int, stream: DataStream) -> dict:
        """The member at stack position ``j`` as a solo checkpoint (``gammadb.runners.checkpoint``'s format)."""
        config = self.configs[self.members[j]]
        solo = self._scratch()
        self.stack.load_member(j, solo.net, solo.init_net)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_json(),
            "step": step,
            "model": {k: v.detach().clone() for k, v in solo.state_dict().items()},
            "optimizer": build_optimizer(config, solo).state_dict(),
            "data": stream.state_dict(),
            "rng": rng_state(),
        }

    def restore(self, states: Sequence[dict]) -> None:
        """Load every member (stack order, before any was dropped) from its solo checkpoint state."""
        solo = self._scratch()
        for j, state in enumerate(states):
            solo.load_state_dict(state["model"])
            self.stack.store_member(j, solo.net, solo.init_net)
        self._reset_measures()

    def output(self, x: Tensor) -> Tensor:
        """The centered outputs f = (f_NN(theta) - f_NN(theta_0)) / gamma of every member: (K, B, C)."""
        with torch.no_grad():
            reference = self.stack.forward(x, init=True)
        return centered_output(self.stack.forward(x), reference, self.gamma)

    def losses(self, batch: Batch) -> Tensor:
        """(K,) the training loss of every member on ``batch``."""
        return self.loss_fn(self.output(batch.x), batch.y, batch.labels)

    @torch.no_grad()
    def sgd_step(self, update: Tensor) -> None:
        """theta_k -= lr_k grad_k for the members where ``update`` (K,) bool is True; the others keep
        their parameters even when their gradients are not finite."""
        for p in self.stack.params:
            grad = p.grad
            if grad is None:
                continue
            grad = torch.where(member_view(update, grad), grad, 0)
            p.addcmul_(grad, member_view(self.neg_lr, p))
            p.grad = None

    def select(self, keep: list[int]) -> None:
        """Keep the members at stack positions ``keep`` (drop the rest from every tensor)."""
        index = torch.tensor(keep, device=self.gamma.device)
        self.stack.select(index)
        self.gamma = self.gamma.index_select(0, index)
        self.neg_lr = self.neg_lr.index_select(0, index)
        self._select_measures(index)
        self.members = [self.members[j] for j in keep]
