"""Random loss weighting (RLW).

Lin, Ye, Zhang and Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022, Section 3 (random loss weighting with the paper's default
distribution): at every step draw ``lambda ~ N(0, I_K)`` and weight the losses by
``softmax(lambda)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting
from .registry import register

Total = Literal["one", "tasks"]


@register
class RLW(LossWeighting):
    """Random loss weighting: ``w = softmax(lambda)``, ``lambda ~ N(0, I)``, redrawn every step.

    Convention: the weights of the present tasks sum to 1 (the paper and LibMTL; torchjd's
    ``Random`` scalarizer draws the same way). ``total="tasks"`` multiplies them by the number
    of present tasks K, so that their mean is 1 and the update has the scale of the summed loss,
    which keeps a learning rate tuned for equal weighting usable.

    The draw uses the global torch RNG (``torch.manual_seed`` makes runs reproducible); it is
    made in float32 on the CPU, so a given seed gives the same weights on every device.
    Absent tasks get no draw: the weights are a softmax over the present tasks only.
    """

    name = "rlw"
    params: ClassVar[dict[str, Param]] = {
        "total": Param("choice", "one", "weights sum to 1 or to K", choices=("one", "tasks")),
    }

    def __init__(self, total: Total = "one") -> None:
        super().__init__()
        self.total = total

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        self.index(tasks)  # rejects unknown task names
        draw = torch.randn(len(tasks))
        weights = torch.softmax(draw.double(), dim=0)
        if self.total == "tasks":
            weights = weights * len(tasks)
        return Decision(weights.to(losses.device))
