"""Geometric loss strategy (GLS).

Chennupati, Sistu, Yogamani and Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, the geometric loss
strategy (their total loss ``L = (prod_{i=1}^n L_i)^(1/n)``): the objective is the geometric
mean of the task losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting
from .registry import register


@register
class GLS(LossWeighting):
    """Geometric loss strategy: minimise ``exp(mean_k log(L_k + eps))``.

    The product of K losses under- or overflows quickly, so the geometric mean is computed in
    log space. ``eps`` (default ``1e-8``) keeps it, and its gradient, finite when a loss is 0:
    ``(prod L_k)^(1/K)`` has an infinite partial derivative in a zero loss. With ``eps=0`` the
    paper's formula is used as is (losses must then stay positive).

    Reported weights are the coefficients of the gradient,
    ``d objective / d L_k = GLS / (K (L_k + eps))``; they do not sum to a constant. The
    update is the one of the weighted sum ``sum_k w_k L_k``, so a task with a small loss gets a
    large weight (the method's scale invariance: multiplying a loss by a constant multiplies
    the objective by a constant, leaving the direction unchanged). The geometric mean is over
    the tasks present in the batch.
    """

    name = "gls"
    params: ClassVar[dict[str, Param]] = {
        "eps": Param("float", 1e-8, "added to each loss before the product", low=0.0),
    }

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        self.index(tasks)  # rejects unknown task names
        if bool((losses.detach() < 0).any()):
            raise ValueError(
                f"gls: the geometric mean needs non-negative losses, got {losses.detach().tolist()}"
            )
        objective = torch.exp(torch.log(losses + self.eps).mean())
        with torch.no_grad():
            shifted = losses.detach().double() + self.eps
            weights = objective.detach().double() / (len(tasks) * shifted)
        return Decision(weights, objective)
