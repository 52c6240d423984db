"""DB-MTL: dual balancing of loss scales and gradient magnitudes.

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu and Kwok, "Dual-Balancing for Multi-Task Learning",
2023 (arXiv:2308.12029), Algorithm 1:

* loss-scale balancing: train on ``log(L_k + eps)`` instead of ``L_k``;
* gradient-magnitude balancing: keep an exponential moving average ``g_hat_k`` of each task's
  gradient of ``log L_k`` w.r.t. the shared parameters (rate ``beta_t = beta / t^sigma``) and
  update the shared parameters with ``max_j ||g_hat_j|| * sum_k g_hat_k / ||g_hat_k||``, so
  every task contributes a gradient as large as the largest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._gramian import require_finite
from .base import Decision, GramianLossWeighting, State, declare
from .registry import register


@register
class DBMTL(GramianLossWeighting):
    """DB-MTL with an EMA of gradient *norms* (a deviation from the paper, see below).

    At step ``t`` with ``n_k = ||grad log(L_k + eps)|| = sqrt(G_kk) / (L_k + eps)`` (``G`` the
    Gramian of the raw losses' gradients), each task keeps
    ``m_k <- beta_t m_k + (1 - beta_t) n_k`` (``m_k = 0`` initially, ``beta_t = beta / t^sigma``
    with ``t`` the task's own step count), and the update is
    ``sum_k alpha_k grad log(L_k + eps)`` with ``alpha_k = max_j m_j / m_k``.
    In terms of the raw losses the weights are ``w_k = alpha_k / (L_k + eps)``; they are what
    is reported, and they do not sum to a constant.

    **Deviation.** The paper (and LibMTL) averages the gradient *vectors* over steps and
    applies the averaged vectors. A Gramian holds inner products, not vectors, so here the
    average is over the norms, and the direction is this step's gradient: the scaling factors
    match the paper when successive gradients are aligned; the update no longer carries
    momentum. In exchange, no per-parameter state is kept and the per-task gradients come from
    :mod:`manytask.engine.gradients` (``mode="exact"`` is the paper's setting, gradients w.r.t. the
    shared parameters; ``mode="feature"`` is a cheaper approximation).

    **Heads.** The weighted objective ``sum_k alpha_k log(L_k + eps)`` is backpropagated
    through everything, so head ``k`` receives ``alpha_k grad log(L_k + eps)``; the paper gives
    heads the unscaled ``grad log(L_k + eps)``. The direction per head is the paper's; the scale
    ``alpha_k >= 1`` acts as a per-head learning-rate factor (absorbed by Adam, the optimizer
    of the paper's experiments).

    **First step, relative to LibMTL.** Both start the average at 0. LibMTL applies the
    averaged *vectors*, which after step t carry the factor ``1 - beta^t`` of an unwarmed EMA
    (no bias correction): its first update is ``(1 - beta) max_j ||grad log L_j||`` per task,
    0.1 of the full scale at ``beta = 0.9``. Here ``alpha`` is a ratio of averaged norms, in
    which that factor cancels, and it scales this step's gradients: the first update is
    ``max_j ||grad log L_j||`` per task, ``1 / (1 - beta)`` times LibMTL's (10x at the default
    ``beta``). The two scales meet as ``beta^t`` vanishes (within 5% after 29 steps at
    ``beta = 0.9``, ``sigma = 0``). With Adam the difference is mostly absorbed; with SGD it acts
    as a learning-rate warm-up that LibMTL has and this implementation does not.

    A task whose averaged norm is 0 has no gradient to rescale and gets ``alpha = 1``.
    Defaults: ``beta=0.9``, ``sigma=0`` (LibMTL's), ``eps=1e-8`` (the paper's code).
    """

    name = "dbmtl"
    params: ClassVar[dict[str, Param]] = {
        "beta": Param("float", 0.9, "EMA factor of the log-loss gradients", low=0.0, high=1.0,
                      high_open=True),
        "sigma": Param("float", 0.0, "EMA decay exponent of beta", low=0.0),
        "eps": Param("float", 1e-8, "added inside the logarithm", low=0.0, low_open=True),
    }
    state = declare(norm_avg=State(), count=State(dtype=torch.long))

    norm_avg: Tensor
    count: Tensor

    def __init__(self, beta: float = 0.9, sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta = beta
        self.sigma = sigma
        self.eps = eps

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        if gramian.shape != (k, k):
            raise ValueError(f"dbmtl: Gramian of shape {tuple(gramian.shape)} for {k} tasks")
        require_finite(gramian, self.name)
        idx = self.index(tasks).to(self.norm_avg.device)
        shifted = losses.detach().double().to(self.norm_avg.device) + self.eps
        with torch.no_grad():
            grad_norm = gramian.diagonal().double().to(shifted.device).clamp_min(0).sqrt()
            n = grad_norm / shifted
            t = self.count[idx] + 1
            rate = self.beta / t.double() ** self.sigma
            avg = rate * self.norm_avg[idx] + (1 - rate) * n
            self.norm_avg[idx] = avg
            self.count[idx] = t
            positive = avg > 0
            top = avg.max()
            alpha = torch.where(positive, top / torch.where(positive, avg, 1.0), 1.0)
        objective = (alpha.to(device=losses.device, dtype=losses.dtype)
                     * torch.log(losses + self.eps)).sum()
        weights = (alpha / shifted).to(losses.device)
        return Decision(weights, objective)
