"""MoDo, multi-objective gradient descent with double sampling (Chen, Fernando, Ying and Chen,
"Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance", NeurIPS 2023 / JMLR 2024, Algorithm 1, eq. 2.9).

MGDA's weights ``lambda`` (on the simplex) are not solved for at each step; they take one
projected stochastic-gradient step on MGDA's objective ``1/2 ||J^T lambda||^2 + rho/2
||lambda||^2`` per iteration, and the update uses the new weights:

    lambda_{t+1} = Pi_simplex(lambda_t - gamma (J_1 J_2^T lambda_t + rho lambda_t))   (eq. 2.9a)
    d_t = J_3^T lambda_{t+1}                                                          (eq. 2.9b)

with ``J_1``, ``J_2``, ``J_3`` the Jacobians of independent mini-batches (the "double
sampling" that makes the step on lambda unbiased).

**Our convention (sampling).** The engine computes one Gramian per step from one batch, so by
default ``J_1 = J_2 = J_3 = J`` and the matrix is ``G = J J^T`` (single sampling, as LibMTL's
and the official code's ``three_grads=False`` share a batch between two of them). For the
paper's double sampling, compute ``A = J_1 J_2^T`` from two batches yourself and pass it as
the ``gramian`` of :meth:`MoDo.decide`: it is used as given (neither symmetrised nor made
PSD), then apply the weights to a third batch's losses. torchjd's ``MoDoWeighting`` takes the
same matrix and is the same map (tested).

Conventions: ``lambda`` starts at ``1/K`` and its weights sum to 1 (the mean-gradient scale,
as the paper, LibMTL and torchjd). Defaults ``gamma = 0.1``, ``rho = 0.1`` (torchjd's; LibMTL
defaults to ``gamma = 0.001``). ``gamma`` is in units of ``1 / ||G||``: the step is not
normalised, as in the paper. ``lambda`` is a buffer (saved in the state dict). Absent tasks:
the present tasks' weights move on their share of the simplex (their total mass is kept, as
:class:`~manytask.balancers.MoCo`), and the decision is that share renormalised to sum 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked, require_finite
from ._qp import simplex_projection
from .base import Decision, GramianWeighting, State, declare
from .registry import register


def present_share(lam: Tensor, idx: Tensor, total: int) -> tuple[np.ndarray, float]:
    """The present tasks' weights and their mass (restarted at ``1/total`` each if none)."""
    share = lam[idx].detach().cpu().double().numpy()
    mass = float(share.sum())
    if not mass > 1e-12:  # every bit of weight sits on absent tasks: restart the present ones
        share = np.full(len(idx), 1.0 / total)
        mass = float(share.sum())
    return share, mass


@register
class MoDo(GramianWeighting):
    """One projected step on MGDA's weights per iteration (Chen et al., 2023, eq. 2.9)."""

    name = "modo"
    params: ClassVar[dict[str, Param]] = {
        "gamma": Param("float", 0.1, "step size of the weights", low=0.0, low_open=True),
        "rho": Param("float", 0.1, "regularisation of the weights", low=0.0),
    }
    state = declare(lam=State(fill=lambda k: 1.0 / k))
    lam: Tensor

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        self.gamma = gamma
        self.rho = rho


    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        require_finite(gramian, self.name)
        idx = self.index(tasks).to(self.lam.device)
        lam, mass = present_share(self.lam, idx, len(self.task_names))
        a = gramian.detach().double().cpu().numpy()  # J_1 J_2^T: used as given (docstring)
        step = lam - float(self.gamma) * (a @ lam + float(self.rho) * lam)
        new = simplex_projection(step, mass)
        self.lam[idx] = torch.from_numpy(new).to(self.lam)
        return Decision(weights=checked(new / mass, self.name))
