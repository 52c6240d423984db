"""Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, Section 3: the DWA weighting equation).

    w_k(t) = K exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T),   r_k(t-1) = Lbar_k(t-1) / Lbar_k(t-2)

where ``Lbar_k(e)`` is the mean training loss of task ``k`` over epoch ``e`` and ``T`` the
temperature. Conventions: the weights of the tasks present in a batch sum to their number K';
they are all 1 during the first two epochs; a task without a (positive) mean loss in both of
the two previous epochs gets ``r_k = 1``.

Epochs are closed by :meth:`end_epoch` (the Trainer calls it; in your own loop, call it at the
end of each epoch). The loss means are accumulated from the losses seen by :meth:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting, State, declare
from .registry import register


@register
class DynamicWeightAverage(LossWeighting):
    """Weights from the ratio of each task's last two epoch-mean losses (Liu et al., 2019, DWA)."""

    name = "dwa"
    params: ClassVar[dict[str, Param]] = {
        "T": Param("float", 2.0, "softmax temperature", low=0.0, low_open=True),
    }
    state = declare(
        loss_sum=State(),
        loss_count=State(dtype=torch.long),
        mean_prev=State(fill=math.nan),  # Lbar(t-1)
        mean_prev2=State(fill=math.nan),  # Lbar(t-2)
        epochs=State(dtype=torch.long, per="run"),
    )
    # Per-task state, allocated by setup().
    loss_sum: Tensor
    loss_count: Tensor
    mean_prev: Tensor
    mean_prev2: Tensor
    epochs: Tensor

    def __init__(self, T: float = 2.0) -> None:
        super().__init__()
        self.T = T

    def ratios(self, tasks: Sequence[str]) -> Tensor:
        """``r_k = Lbar_k(t-1) / Lbar_k(t-2)`` for ``tasks`` (1 where undefined)."""
        idx = self.index(tasks)
        last, before = self.mean_prev[idx], self.mean_prev2[idx]
        defined = torch.isfinite(last) & torch.isfinite(before) & (before > 0)
        return torch.where(defined, last / torch.where(defined, before, 1.0), 1.0)

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        idx = self.index(tasks).to(self.loss_sum.device)
        self.loss_sum.index_add_(0, idx, losses.detach().double().to(self.loss_sum.device))
        self.loss_count.index_add_(0, idx, torch.ones_like(idx))
        k = len(tasks)
        if int(self.epochs) < 2:
            return Decision(torch.ones(k, dtype=torch.float64))
        return Decision(k * torch.softmax(self.ratios(tasks).cpu() / self.T, dim=0))

    def end_epoch(self) -> None:
        if not self.task_names:
            return  # nothing seen yet
        count = self.loss_count.double()
        mean = torch.where(count > 0, self.loss_sum / count.clamp_min(1), float("nan"))
        self.mean_prev2.copy_(self.mean_prev)
        self.mean_prev.copy_(mean)
        self.loss_sum.zero_()
        self.loss_count.zero_()
        self.epochs += 1
