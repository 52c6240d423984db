"""IMTL-L: the loss-balance part of impartial multi-task learning.

Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021, the loss-balance method (IMTL-L, Section 3, "Loss balance"): each task gets a
learnable scale ``s_k`` and the objective is ``sum_k (e^{s_k} L_k - s_k)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Balancer, Decision, LossWeighting, State, declare
from .registry import register


class LogScales(Balancer):
    """A balancer with one learnable log-scale ``s_k`` per task (IMTL-L and full IMTL)."""

    # One scalar parameter per task: an absent task's scale gets no gradient at all
    # (``.grad`` stays ``None``), so optimisers with momentum or weight decay skip it.
    state = declare(log_scales=State(dtype=torch.float32, learnable=True))
    log_scales: nn.ParameterList

    def scales(self) -> Tensor:
        """The current ``s_k`` of all tasks, detached, in the order given to :meth:`setup`."""
        return torch.stack([p.detach() for p in self.log_scales])


@register
class IMTLL(LogScales, LossWeighting):
    """IMTL-L: minimise ``sum_k (e^{s_k} L_k - s_k)`` jointly over the model and ``s``.

    For a fixed loss, the optimum in ``s_k`` satisfies ``e^{s_k} L_k = 1``: the scaled losses
    are driven to a common value, whatever the raw scale of each task (the paper's scale
    invariance). ``s`` starts at 0, so the first step is the plain summed loss.

    ``s`` are parameters (one scalar per task) created by :meth:`setup`, which
    ``make_balancer("imtl_l", tasks=[...])`` calls: give the optimizer
    ``balancer.parameters()`` too (the Trainer does); :func:`manytask.backward` raises if an
    optimizer steps without them.

    Reported weights are ``e^{s_k}`` (the coefficient of ``L_k`` in the gradient; they do not
    sum to a constant). No logarithm is taken and nothing is clamped, so the objective
    is finite for any finite loss, including 0 (where ``s_k`` then grows linearly; the paper
    assumes positive losses). Only the scales of the present tasks enter the objective, so an
    absent task's scale gets no gradient (``.grad`` stays ``None``).
    """

    name = "imtl_l"

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        positions = self.index(tasks).tolist()
        s = torch.stack([self.log_scales[i] for i in positions]).to(losses.dtype)
        objective = (torch.exp(s) * losses - s).sum()
        weights = torch.exp(s.detach().double())
        return Decision(weights, objective)
