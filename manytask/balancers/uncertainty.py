"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

Each task ``k`` gets a learnable log-variance ``s_k = log sigma_k^2`` (initialised to 0) and the
objective is the generalisation of the paper's eq. 7 to K tasks,

    sum_k  0.5 * exp(-s_k) * L_k  +  0.5 * s_k       (= L_k / (2 sigma_k^2) + log sigma_k),

i.e. the regression form of eq. 7 for every task; the paper's classification form (eq. 10,
factor 1 instead of 1/2) differs only by a constant in the weight. Reported weights are
``0.5 * exp(-s_k)``, so they are 0.5 each at initialisation (not normalised).

The ``s_k`` are parameters of this module: build the optimiser after :meth:`setup` and give it
``balancer.parameters()`` too (the Trainer does both).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Decision, LossWeighting, State, declare
from .registry import register


@register
class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic-uncertainty weights ``0.5 exp(-s_k)`` (Kendall et al., 2018, eq. 7).

    One scalar parameter per task, so an absent task's ``s_k`` gets no gradient at all (its
    ``.grad`` stays ``None`` and optimisers skip it).
    """

    name = "uncertainty"
    state = declare(log_vars=State(dtype=torch.float32, learnable=True))

    def __init__(self) -> None:
        super().__init__()
        self.log_vars = nn.ParameterList()

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        idx = self.index(tasks).tolist()
        # Moving the parameters to the losses' device is differentiable: .grad lands on them.
        s = torch.stack([self.log_vars[i] for i in idx]).to(
            device=losses.device, dtype=losses.dtype
        )
        objective = (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()
        return Decision(weights=(0.5 * torch.exp(-s)).detach().double().cpu(), objective=objective)
