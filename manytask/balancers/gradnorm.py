"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018, eqs. 1-2 and Algorithm 1).

Learnable loss weights ``w_k`` (initialised to 1) tuned so that the weighted gradient norms
``G_W^(k) = w_k ||g_k||`` train at balanced rates. At each step, with the Gramian ``G`` of the
present tasks' gradients:

* ``G_W^(k) = w_k sqrt(G_kk)``;
* ``Ltilde_k = L_k(t) / L_k(0)`` (``L_k(0)`` is recorded the first time task k is seen) and the
  relative inverse training rate ``r_k = Ltilde_k / mean_j Ltilde_j``;
* target ``t_k = mean_j G_W^(j) * r_k^alpha``, held constant (eq. 2);
* ``L_grad = sum_k |G_W^(k) - t_k|``, whose gradient ``sign(G_W^(k) - t_k) sqrt(G_kk)`` w.r.t.
  ``w_k`` is computed analytically; ``w`` takes one gradient step of size ``lr``, is kept
  positive (floored at ``1e-4``), then renormalised.

Conventions: the weights sum to K, the number of tasks given to :meth:`setup` (eq. "renormalise
so that sum_i w_i = T" of Algorithm 1). The renormalisation rescales only the tasks present in
the batch so that their sum is unchanged by the step: the total stays K and absent tasks keep
their weight. The weights returned are those used for this step, before the update, as in
Algorithm 1. The loss ``sum_k w_k L_k`` is backpropagated through the heads too
(``applies_to_heads``).

Which gradients: the paper uses the last shared layer ``W``. Pass only that layer's parameters
as ``shared_params`` to :func:`manytask.backward` to get exactly that (``mode="exact"``), or use
``mode="feature"`` for gradients w.r.t. the shared features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._gramian import require_finite
from .base import Decision, GramianLossWeighting, State, declare
from .registry import register

_FLOOR = 1e-4  # weights are kept at least this large so that they stay positive


@register
class GradNorm(GramianLossWeighting):
    """Loss weights that equalise the tasks' training rates (Chen et al., 2018, Algorithm 1)."""

    name = "gradnorm"
    params: ClassVar[dict[str, Param]] = {
        "alpha": Param("float", 1.5, "restoring-force exponent", low=0.0),
        "lr": Param("float", 0.025, "step size of the weights", low=0.0, low_open=True),
    }
    state = declare(weights=State(fill=1.0), initial_losses=State(fill=math.nan))
    # Per-task state, allocated by setup().
    weights: Tensor
    initial_losses: Tensor

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        self.alpha = alpha
        self.lr = lr

    def _record_initial(self, losses: Tensor, idx: Tensor) -> None:
        first = torch.isnan(self.initial_losses[idx])
        self.initial_losses[idx[first]] = losses.detach().double()[first]

    def target_norms(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Tensor:
        """The targets ``mean_j G_W^(j) * r_k^alpha`` of eq. 2 for the present ``tasks``.

        Uses the recorded initial losses (the current ones for a task not seen before).
        """
        idx = self.index(tasks).to(self.weights.device)
        current = losses.detach().double().to(self.weights.device)
        gramian = gramian.detach().double().to(self.weights.device)
        recorded = self.initial_losses[idx]
        initial = torch.where(torch.isnan(recorded), current, recorded)
        # A zero initial loss leaves the training rate undefined; treat that task as on pace.
        ltilde = torch.where(initial > 0, current / initial.clamp_min(1e-300), 1.0)
        mean = ltilde.mean()
        r = ltilde / mean if mean > 0 else torch.ones_like(ltilde)
        norms = self.weights[idx] * gramian.diagonal().clamp_min(0).sqrt()
        return norms.mean() * r.pow(self.alpha)

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        require_finite(gramian, self.name)
        idx = self.index(tasks).to(self.weights.device)
        losses = losses.detach().double().to(self.weights.device)
        gramian = gramian.detach().double().to(self.weights.device)
        self._record_initial(losses, idx)
        used = self.weights[idx].clone()
        target = self.target_norms(losses, tasks, gramian)
        grad_norm = gramian.diagonal().clamp_min(0).sqrt()
        # d/dw_k |w_k ||g_k|| - t_k| with t_k held constant.
        step = torch.sign(used * grad_norm - target) * grad_norm
        updated = (used - self.lr * step).clamp_min(_FLOOR)
        self.weights[idx] = updated * (used.sum() / updated.sum())
        return Decision(weights=used.cpu())
