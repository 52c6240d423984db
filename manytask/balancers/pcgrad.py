"""PCGrad, "gradient surgery" (Yu, Kumar, Gupta, Levine, Hausman and Finn, NeurIPS 2020, Alg. 1).

For each task ``i``, ``g_i^PC`` starts as ``g_i`` and is projected, for every other task ``j``
taken in a random order, onto the normal plane of ``g_j`` whenever they conflict:

    if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

(the already projected ``g_i^PC`` against the *original* ``g_j``). The update is
``sum_i g_i^PC``: a sum, as in the paper, LibMTL and torchjd, so the coefficients sum to K when
no pair conflicts.

Each ``g_i^PC`` is kept as a coefficient vector over the original gradients, so the whole
procedure runs on the K x K Gramian: ``g_i^PC . g_j = (C G)_ij``. The K projections are
vectorised across ``i``: step ``s`` projects every ``g_i^PC`` against its own ``s``-th task.

Order: with ``shuffle=True`` each task draws its order with ``torch.randperm(K)`` from the global
torch RNG (one draw per task, in task order, skipping itself), which is also how torchjd 0.18
draws it; ``shuffle=False`` uses the fixed order ``j = 0..K-1`` of the present tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register


def pcgrad_coefficients(gramian: Tensor, orders: Tensor) -> Tensor:
    """Rows: coefficients of each projected ``g_i^PC`` over the original gradients.

    ``orders[i]`` is the order (a permutation of ``0..K-1``; ``i`` itself is skipped) in which
    task ``i`` is projected against the others. The loop runs on NumPy arrays: its K steps are
    a few K x K operations each, where torch's per-call overhead would be most of the cost.
    """
    g = gramian.detach().double().cpu().numpy()
    order = orders.cpu().numpy()
    k = g.shape[0]
    coef = np.eye(k)
    rows = np.arange(k)
    sq_norms = np.diagonal(g)
    for step in range(k):
        j = order[:, step]
        inner = np.einsum("ij,ij->i", coef, g[j])  # g_i^PC . g_{j_i}, O(K^2)
        # A zero g_j cannot conflict; the guard only protects against rounding.
        conflict = (j != rows) & (inner < 0) & (sq_norms[j] > 0)
        coef[rows[conflict], j[conflict]] -= inner[conflict] / sq_norms[j[conflict]]
    return torch.from_numpy(coef)


@register
class PCGrad(GramianWeighting):
    """Project away conflicting gradient components (Yu et al., 2020, Algorithm 1)."""

    name = "pcgrad"
    params: ClassVar[dict[str, Param]] = {
        "shuffle": Param("bool", True, "random task order per projection"),
    }

    def __init__(self, shuffle: bool = True) -> None:
        super().__init__()
        self.shuffle = shuffle

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        if self.shuffle:
            orders = torch.stack([torch.randperm(k) for _ in range(k)])
        else:
            orders = torch.arange(k).expand(k, k)
        g = torch.from_numpy(prepared(gramian, self.name))
        coef = pcgrad_coefficients(g, orders)
        return Decision(weights=checked(coef.sum(dim=0), self.name))
