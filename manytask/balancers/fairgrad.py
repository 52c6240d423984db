"""FairGrad, fair resource allocation in multi-task learning (Ban and Ji, ICML 2024, Section 3,
Algorithm 1; eq. 4 of arXiv:2402.15638).

The update ``d = sum_k w_k g_k`` maximises the alpha-fair utility ``sum_k (g_k . d)^(1-alpha) /
(1-alpha)`` over a ball; its weights solve

    G w = w^(-1/alpha)   (elementwise, w > 0),

so that every task gets ``g_k . d = w_k^(-1/alpha)``. ``alpha = 1`` is proportional fairness,
i.e. Nash-MTL's ``G w = 1/w``; large ``alpha`` tends to max-min fairness (MGDA-like). The
reference code solves the equation with ``scipy.optimize.least_squares``; we solve it exactly by
Newton's method on a convex function (:mod:`._fairness`, with its documented ridge where no
solution exists), so the result is always finite.

Conventions: weights as defined by the equation on the unnormalised Gramian (no normalisation,
no clipping), as the reference code and torchjd. ``alpha = 0`` is linear scalarisation: equal
weights ``1/K`` (torchjd's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._fairness import fair_weights
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register


@register
class FairGrad(GramianWeighting):
    """alpha-fair weights solving ``G w = w^(-1/alpha)`` (Ban and Ji, 2024, Algorithm 1)."""

    name = "fairgrad"
    params: ClassVar[dict[str, Param]] = {
        "alpha": Param("float", 1.0, "alpha-fairness exponent", low=0.0),
    }

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        g = prepared(gramian, self.name)
        if self.alpha == 0:
            return Decision(weights=torch.full((k,), 1.0 / k, dtype=torch.float64))
        return Decision(weights=checked(fair_weights(g, 1.0 / self.alpha), self.name))
