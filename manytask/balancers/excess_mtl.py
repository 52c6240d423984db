"""ExcessMTL, robust multi-task learning with excess risks (He, Zhou, Wang and Zhao, "Robust
Multi-Task Learning with Excess Risks", ICML 2024, Section 3, eq. 6-9).

Each task's excess risk is estimated by a second-order Taylor expansion with a diagonal,
Adagrad-like Hessian estimate: with ``S_k`` the running sum of the squared gradients of task
``k`` (coordinate-wise, this step's included),

    r_k = sum_d g_kd^2 / sqrt(S_kd + 1e-7)                                          (eq. 6-7)

scaled by its first value (Section 3.2, "scale processing": ``r_k / (r_k^0 + 1e-7)``, so tasks
of different loss scales compare), and the task weights ``alpha`` (on the simplex, starting at
``1/K``, as in the paper and torchjd) take an exponentiated-gradient step (eq. 9):

    alpha_k <- alpha_k exp(eta r_k) / sum_j alpha_j exp(eta r_j).

The update is ``sum_k alpha_k g_k``. With ``n_warmup_steps > 0`` the weights stay at their
initial value for that many steps while the statistics are collected, and ``r^0`` is the mean
over the warm-up (the paper's Appendix C.1 suggests three epochs).

It **needs the Jacobian** (``requires = "jacobian"``): the state ``S`` is a K x D buffer (D the
number of shared parameters in exact mode, of feature entries in feature mode), sized at the
first call and saved in the state dict. Absent tasks: only the present tasks' statistics move,
and their weights are renormalised among themselves, keeping their total mass. With every task
present this is torchjd 0.18's ``ExcessMTL``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked
from ._lazy import LazyRows
from .base import Decision, JacobianAggregator, State, declare
from .registry import register

_EPS = 1e-7


@register
class ExcessMTL(LazyRows, JacobianAggregator):
    """Exponentiated-gradient task weights driven by estimated excess risks (He et al., 2024)."""

    name = "excess_mtl"
    params: ClassVar[dict[str, Param]] = {
        "robust_step_size": Param("float", 1.0, "step of the weight update", low=0.0,
                                  low_open=True),
        "n_warmup_steps": Param("int", 0, "steps that set the initial excess", low=0),
    }
    state = declare(
        sq_sum=State(dtype=torch.float32, shape=(0,)),  # sized at the first call
        alpha=State(fill=lambda k: 1.0 / k),
        initial=State(fill=math.nan),
        warmup_sum=State(),
        warmup_count=State(dtype=torch.long),
        steps=State(dtype=torch.long, per="run"),
    )
    lazy_buffers = ("sq_sum",)
    sq_sum: Tensor
    alpha: Tensor
    initial: Tensor
    warmup_sum: Tensor
    warmup_count: Tensor
    steps: Tensor

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__()
        self.robust_step_size = robust_step_size
        self.n_warmup_steps = n_warmup_steps

    def decide(self, losses: Tensor, tasks: Sequence[str], jacobian: Tensor) -> Decision:
        j = jacobian.detach()
        self.ensure_width(j.shape[1], j.dtype, j.device)
        idx = self.index(tasks).to(self.alpha.device)
        sq = j.square()
        if len(tasks) == len(self.task_names) and bool((idx == torch.arange(len(idx))).all()):
            sums = self.sq_sum.add_(sq)  # every task, in order: update in place, no gather
        else:
            rows = idx.to(j.device)
            self.sq_sum[rows] += sq.to(self.sq_sum.dtype)
            sums = self.sq_sum[rows]
        # sum_d sq / sqrt(S + eps) as a row-wise dot product: no second K x D temporary.
        inv_root = torch.add(sums, _EPS).rsqrt_()
        risk = torch.linalg.vecdot(sq, inv_root).double().to(self.alpha.device)
        warming = int(self.steps) < int(self.n_warmup_steps)
        self.steps += 1
        if warming:
            self.warmup_sum[idx] += risk
            self.warmup_count[idx] += 1
        else:
            init = self.initial[idx]
            unset = torch.isnan(init)
            seen = self.warmup_count[idx] > 0
            warm_mean = self.warmup_sum[idx] / self.warmup_count[idx].clamp_min(1)
            # First sight after a warm-up: scale by the warm-up mean. First sight without one:
            # the value itself becomes the reference, unscaled (as the reference code does).
            new_init = torch.where(unset, torch.where(seen, warm_mean, risk), init)
            self.initial[idx] = new_init
            risk = torch.where(unset & ~seen, risk, risk / (new_init + _EPS))
            alpha = self.alpha[idx]
            mass = alpha.sum()
            logits = torch.log(alpha) + float(self.robust_step_size) * risk
            self.alpha[idx] = mass * torch.softmax(logits, dim=0)
        weights = checked(self.alpha[idx].cpu(), self.name)
        update = weights.to(dtype=j.dtype, device=j.device) @ j
        checked(update, self.name)
        return Decision(weights=weights, update=update)
