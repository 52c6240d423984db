"""MoCo, multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan and
Chen, "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach",
ICLR 2023, Algorithm 1).

MGDA's weights computed from stochastic gradients are biased; MoCo tracks each task's gradient
with a moving average and takes a single projected-gradient step on the MGDA weights per
iteration instead of solving MGDA exactly:

    y_k <- y_k - beta (y_k - g_k)                       (tracking, Algorithm 1 line 4)
    lambda <- Pi_simplex(lambda - gamma (Y Y^T + rho I) lambda)        (line 5)
    update = Y^T lambda                                                (line 6)

with constant step sizes ``beta`` and ``gamma`` (the paper's ``beta_t``, ``gamma_t``) and the
regulariser ``rho >= 0``. ``lambda`` starts at ``1/K`` and sums to 1.

It **needs the Jacobian** (``requires = "jacobian"``): the tracked gradients ``Y`` are a K x D
buffer (D the number of shared parameters in exact mode, of feature entries in feature mode),
sized at the first call (``y_k`` starts at the task's first gradient) and saved in the state
dict. Absent tasks: only the present tasks' ``y_k`` move, and the step on ``lambda`` is
projected onto the present tasks' share of the simplex (their total mass is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked
from ._lazy import LazyRows
from ._qp import _project
from .base import Decision, JacobianAggregator, State, declare
from .registry import register


@register
class MoCo(LazyRows, JacobianAggregator):
    """MGDA weights by one projected step per iteration on tracked gradients (Fernando et al.)."""

    name = "moco"
    params: ClassVar[dict[str, Param]] = {
        "beta": Param("float", 0.5, "tracking step of the gradients", low=0.0, high=1.0,
                      low_open=True),
        "gamma": Param("float", 0.1, "step size of the weights", low=0.0, low_open=True),
        "rho": Param("float", 0.0, "weight regularisation", low=0.0),
    }
    state = declare(
        tracked=State(dtype=torch.float32, shape=(0,)),  # sized at the first call
        seen=State(dtype=torch.bool),
        lam=State(fill=lambda k: 1.0 / k),
    )
    lazy_buffers = ("tracked",)
    tracked: Tensor
    seen: Tensor
    lam: Tensor

    def __init__(self, beta: float = 0.5, gamma: float = 0.1, rho: float = 0.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.rho = rho

    def decide(self, losses: Tensor, tasks: Sequence[str], jacobian: Tensor) -> Decision:
        j = jacobian.detach()
        self.ensure_width(j.shape[1], j.dtype, j.device)
        idx = self.index(tasks).to(self.tracked.device)
        fresh = ~self.seen[idx]
        if bool(fresh.any()):  # y_k starts at the task's first gradient
            rows = idx[fresh].to(j.device)
            self.tracked[rows] = j[fresh.to(j.device)].to(self.tracked.dtype)
            self.seen[idx] = True
        if len(tasks) == len(self.task_names) and bool((idx == torch.arange(len(idx))).all()):
            y = self.tracked  # every task, in order: update in place, no gather
            y.lerp_(j, torch.where(fresh, 0.0, float(self.beta)).to(y)[:, None])
        else:
            rows = idx.to(j.device)
            y = self.tracked[rows]
            y.lerp_(j, torch.where(fresh, 0.0, float(self.beta)).to(y)[:, None])
            self.tracked[rows] = y
        lam = self.lam[idx].cpu()
        y64 = y.double()  # in float64: a float32 product overflows near gradients of 1e19
        gram = (y64 @ y64.T).cpu()
        step = lam - float(self.gamma) * (gram @ lam + float(self.rho) * lam)
        mass = float(lam.sum())
        k = len(tasks)
        new = _project(step.numpy(), np.zeros(k), mass)
        lam = torch.from_numpy(np.maximum(new, 0.0))
        self.lam[idx] = lam.to(self.lam.device)
        update = lam.to(dtype=y.dtype, device=y.device) @ y
        checked(update, self.name)
        return Decision(weights=checked(lam, self.name), update=update)
