"""SDMGrad, stochastic direction-oriented multi-objective gradient descent (Xiao, Ban and Ji,
"Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
NeurIPS 2023, Section 4, Algorithm 1).

The update is kept near a target direction ``g0 = J^T w~`` (``w~`` a preference vector; the
mean gradient for ``w~ = 1/K``) by a regulariser of weight ``lambda``. Its weights ``w`` solve

    min_{w in simplex}  1/2 || J^T w + lambda g0 ||^2,

whose gradient in ``w`` is ``J J^T (w + lambda w~)``; the update is

    d = (J^T w + lambda g0) / (1 + lambda),   i.e. weights (w + lambda w~) / (1 + lambda).

Algorithm 1 takes ``n_iter`` projected stochastic-gradient steps (with momentum, as the official
code and LibMTL) on ``w`` per iteration, from the previous iteration's ``w``:

    v <- momentum v + A (w + lambda w~),   w <- Pi_simplex(w - lr v),   v reset at each call,

with ``A = J_xi J_xi'^T`` from two independent batches, divided by ``s^2 + 1e-8``,
``s = mean_k sqrt(max(A_kk, 0))`` (the official code's and LibMTL's normalisation, which
makes ``lr`` independent of the gradients' scale; Section 6.1 of the paper).

**Our convention (sampling).** The engine computes one Gramian per step from one batch, so by
default ``A = G = J J^T`` (single sampling). For the paper's double sampling, compute
``A = J_1 J_2^T`` yourself and pass it as the ``gramian`` of :meth:`SDMGrad.decide`: it is used
as given (neither symmetrised nor made PSD), and apply the weights to a third batch's losses.
torchjd's ``SDMGradWeighting`` takes the same matrix and is the same map (tested).

Conventions: weights sum to 1 (the mean-gradient scale, as the paper, LibMTL and torchjd),
``w~ = 1/K``. Defaults ``lambda = 0.3``, ``n_iter = 20``, ``momentum = 0.5`` (LibMTL's and
torchjd's), ``lr = 10`` (torchjd's; LibMTL uses 5). ``w`` is a buffer (saved in the state
dict), starting at ``1/K``. Absent tasks: the present tasks' ``w`` moves on their share of the
simplex (their mass is kept), renormalised to sum 1 for the decision; ``w~`` is uniform over the
present tasks.
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
from .modo import present_share
from .registry import register


def sdmgrad_inner(a: np.ndarray, w: np.ndarray, lam: float, lr: float, momentum: float,
                  n_iter: int, mass: float = 1.0) -> np.ndarray:
    """``n_iter`` projected momentum-SGD steps on ``w`` (sum ``mass``) for the matrix ``a``."""
    diag = np.clip(np.diag(a), 0.0, None)
    a = a / (float(np.mean(np.sqrt(diag))) ** 2 + 1e-8)
    target = np.full(len(w), mass / len(w))  # lambda w~, on the share's scale
    velocity = np.zeros_like(w)
    for i in range(n_iter):
        grad = a @ (w + lam * target)
        velocity = grad if i == 0 else momentum * velocity + grad
        w = simplex_projection(w - lr * velocity, mass)
    return w


@register
class SDMGrad(GramianWeighting):
    """MGDA weights pulled towards the mean gradient (Xiao, Ban and Ji, 2023, Algorithm 1)."""

    name = "sdmgrad"
    params: ClassVar[dict[str, Param]] = {
        "lamda": Param("float", 0.3, "pull towards the mean gradient", low=0.0),
        "lr": Param("float", 10.0, "step size of the inner loop", low=0.0, low_open=True),
        "momentum": Param("float", 0.5, "momentum of the inner loop", low=0.0, high=1.0,
                          high_open=True),
        "n_iter": Param("int", 20, "inner iterations per step", low=1),
    }
    state = declare(w=State(fill=lambda k: 1.0 / k))
    w: Tensor

    def __init__(self, lamda: float = 0.3, lr: float = 10.0, momentum: float = 0.5,
                 n_iter: int = 20) -> None:
        super().__init__()
        self.lamda = lamda
        self.lr = lr
        self.momentum = momentum
        self.n_iter = n_iter


    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        require_finite(gramian, self.name)
        idx = self.index(tasks).to(self.w.device)
        w, mass = present_share(self.w, idx, len(self.task_names))
        a = gramian.detach().double().cpu().numpy()  # J_1 J_2^T: used as given (docstring)
        w = sdmgrad_inner(a, w, float(self.lamda), float(self.lr), float(self.momentum),
                          int(self.n_iter), mass)
        self.w[idx] = torch.from_numpy(w).to(self.w)
        lam = float(self.lamda)
        weights = (w / mass + lam / len(tasks)) / (1.0 + lam)
        return Decision(weights=checked(weights, self.name))
