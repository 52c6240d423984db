"""GradVac, gradient vaccine (Wang, Tsvetkov, Firat and Cao, "Gradient Vaccine: Investigating
and Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021,
Algorithm 1 and eq. 3-4).

GradVac keeps, for every ordered pair of tasks, an exponential moving average ``phi_hat_ij``
of the cosine similarity of their gradients (the "similarity goal"). At each step, for each
task ``i``, ``g_i^PC`` starts as ``g_i`` and, for every other task ``j`` in a random order:

    phi_ij = cos(g_i^PC, g_j)
    if phi_ij < phi_hat_ij:
        g_i^PC <- g_i^PC + ||g_i^PC|| (phi_hat sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat^2))
                           / (||g_j|| sqrt(1 - phi_hat^2)) g_j        (eq. 3, phi_hat = phi_hat_ij)
    phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij                 (eq. 4)

(the EMA takes the cosine *before* the correction). The update is ``sum_i g_i^PC``: a sum, as in
the paper, LibMTL and torchjd, so the coefficients are all 1 when no correction fires.

As in :mod:`.pcgrad`, each ``g_i^PC`` is kept as coefficients over the original gradients, so
everything runs on the Gramian, and the K rows are processed together (step ``s`` treats every
task against its own ``s``-th other task). The paper applies GradVac per parameter group
(layer); here it is applied to the whole shared gradient (or the features), like torchjd's
default.

State: ``phi_hat`` (K x K over all tasks given to ``setup``, starting at 0, so the first step
corrects only negative cosines, as PCGrad with a partial projection) is a buffer, saved in the
state dict; an absent task's pairs are left untouched. ``eps`` is added to the denominators as
in torchjd (default ``1e-8``; it only matters for (near-)zero gradients).

Order: with ``shuffle=True`` (default) the permutation of the other tasks is drawn for each task
``i`` in turn with ``torch.randperm(K - 1)`` from the global RNG, which is how torchjd 0.18 draws
it, so both agree under the same seed and the same state; ``shuffle=False`` visits the other
present tasks in their fixed order ``0..K-1``, as :class:`~manytask.balancers.PCGrad`'s option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting, State, declare
from .registry import register


def gradvac_coefficients(
    gramian: Tensor, phi_hat: Tensor, orders: Tensor, beta: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Coefficients (rows: each ``g_i^PC`` over the original gradients) and the new ``phi_hat``.

    ``orders[i]`` (length K - 1) lists the other tasks in the order task ``i`` visits them.
    ``gramian`` and ``phi_hat`` (K x K, present tasks) are float64; ``phi_hat`` is not modified.
    """
    k = gramian.shape[0]
    coef = torch.eye(k, dtype=torch.float64)
    phi_hat = phi_hat.clone()
    rows = torch.arange(k)
    norms = gramian.diagonal().clamp_min(0).sqrt()
    for step in range(k - 1):
        j = orders[:, step]
        cg = coef @ gramian  # row i: g_i^PC . g_m for every m
        dot = cg[rows, j]
        norm_i = (cg * coef).sum(dim=1).clamp_min(0).sqrt()
        phi = dot / (norm_i * norms[j] + eps)
        target = phi_hat[rows, j]
        fire = phi < target
        root_phi = (1 - phi * phi).clamp_min(0).sqrt()
        root_hat = (1 - target * target).clamp_min(0).sqrt()
        w = norm_i * (target * root_phi - phi * root_hat) / (norms[j] * root_hat + eps)
        coef[rows, j] += torch.where(fire, w, torch.zeros_like(w))
        phi_hat[rows, j] = (1 - beta) * target + beta * phi
    return coef, phi_hat


@register
class GradVac(GramianWeighting):
    """Steer pairwise gradient cosines towards their running averages (Wang et al., 2021)."""

    name = "gradvac"
    params: ClassVar[dict[str, Param]] = {
        "beta": Param("float", 0.5, "EMA factor of the cosine targets", low=0.0, high=1.0),
        "eps": Param("float", 1e-8, "floor of the norms", low=0.0),
        "shuffle": Param("bool", True, "visit the tasks in a random order each step (as "
                         "PCGrad); false: their given order"),
    }
    state = declare(phi_hat=State(per="pair"))
    phi_hat: Tensor

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, shuffle: bool = True) -> None:
        super().__init__()
        self.beta = beta
        self.eps = eps
        self.shuffle = shuffle

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        idx = self.index(tasks)
        orders = torch.empty((k, max(k - 1, 0)), dtype=torch.long)
        for i in range(k):  # one draw per task, in task order (torchjd's order of RNG calls)
            others = torch.cat([torch.arange(i), torch.arange(i + 1, k)])
            orders[i] = others[torch.randperm(k - 1)] if self.shuffle else others
        state = self.phi_hat[idx[:, None], idx[None, :]].cpu()
        coef, new = gradvac_coefficients(
            torch.from_numpy(prepared(gramian, self.name)), state, orders, float(self.beta),
            float(self.eps),
        )
        self.phi_hat[idx[:, None], idx[None, :]] = new.to(self.phi_hat.device)
        return Decision(weights=checked(coef.sum(dim=0), self.name))
