"""GradDrop, gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov,
"Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020,
eq. 1-4 and Algorithm 1).

Per coordinate ``d`` of the shared gradient (or of the features, in feature mode: the paper
applies it at an activation layer), the positive sign purity

    P_d = 1/2 (1 + sum_k J_kd / sum_k |J_kd|)                                       (eq. 1)

is compared with one uniform draw ``U_d``; task ``k`` keeps its component where its sign is the
one picked, ``M_kd = [P_d > U_d][J_kd > 0] + [P_d < U_d][J_kd < 0]`` (eq. 2-3), and the update
is ``sum_k (leak + (1 - leak) M_k) * J_k`` (eq. 4 with ``f`` the identity; ``leak`` as in
Algorithm 1, the same for every task).

It is not a linear combination of the task gradients, so it **needs the Jacobian itself**
(``requires = "jacobian"``): a K x D matrix (D the number of shared parameters in exact mode,
of feature entries in feature mode) on top of the Gramian; memory and time grow as K x D.
Reported weights are all 1 (the sum convention; they scale the heads only under
``head_grad="weighted"``). The draw ``U = torch.rand(D)`` comes from the global torch RNG, as in
torchjd 0.18, so both agree under the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked
from .base import Decision, JacobianAggregator
from .registry import register


def graddrop_update(jacobian: Tensor, leak: float, u: Tensor) -> Tensor:
    """The GradDrop update for the K x D ``jacobian`` and uniform draws ``u`` of shape (D,)."""
    total = jacobian.sum(dim=0)
    mass = jacobian.abs().sum(dim=0)
    # A column of zeros has no sign to pick; P = 1/2 there, and it contributes nothing anyway.
    purity = 0.5 * (1 + torch.where(mass > 0, total / mass.clamp_min(1e-300), 0.0))
    # Keeping the positive components of a column sums them: (total + mass) / 2; keeping the
    # negative ones gives (total - mass) / 2. So eq. 4 needs only these two column sums: two
    # passes over the K x D matrix instead of building K x D masks.
    kept = torch.where(
        purity > u,
        0.5 * (total + mass),
        torch.where(purity < u, 0.5 * (total - mass), torch.zeros_like(total)),
    )
    return leak * total + (1 - leak) * kept if leak else kept


@register
class GradDrop(JacobianAggregator):
    """Keep, per coordinate, only the gradient components of the sign drawn by purity."""

    name = "graddrop"
    params: ClassVar[dict[str, Param]] = {
        "leak": Param("float", 0.0, "share of the dropped gradient kept", low=0.0, high=1.0),
    }

    def __init__(self, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = leak

    def decide(self, losses: Tensor, tasks: Sequence[str], jacobian: Tensor) -> Decision:
        u = torch.rand(jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
        update = checked(graddrop_update(jacobian, float(self.leak), u), self.name)
        return Decision(weights=torch.ones(len(tasks), dtype=torch.float64), update=update)
