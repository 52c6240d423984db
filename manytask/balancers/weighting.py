"""Constant loss weightings: equal weighting and user-given fixed weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting
from .registry import number_map, register


@register
class EqualWeighting(LossWeighting):
    """Equal weighting: the plain summed loss ``sum_k L_k`` (every weight is 1).

    The baseline of every multi-task paper. Weights sum to K, so the update equals the one of
    the summed loss (LibMTL's ``EW``; torchjd's ``Mean`` is this divided by K).
    """

    name = "equal"

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        return Decision(torch.ones(len(tasks), dtype=torch.float64))


@register
class FixedWeights(LossWeighting):
    """Fixed weights: ``sum_k w_k L_k`` with user-given ``w_k`` (1 for a task not named)."""

    name = "fixed"
    params: ClassVar[dict[str, Param]] = {
        "weights": Param("any", None, "{task: weight}; 1 for a task not named",
                         nullable=True, check=number_map(low=0.0)),
    }

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(weights or {})

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        unknown = sorted(set(self.weights) - set(self.task_names))
        if unknown:
            raise ValueError(f"fixed: weights given for unknown task(s) {unknown}")

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        return Decision(
            torch.tensor([float(self.weights.get(t, 1.0)) for t in tasks], dtype=torch.float64)
        )
