"""IMTL-G, the gradient part of impartial multi-task learning (Liu, Li, Kuang, Xue, Chen, Yang,
Liao and Zhang, "Towards Impartial Multi-task Learning", ICLR 2021, Section 3: gradient
balance and its closed-form solution).

The update ``g = sum_k a_k g_k`` with ``sum_k a_k = 1`` has *equal projections* on every task's
unit gradient ``u_k = g_k / ||g_k||``: ``g . u_k`` is the same for all k. On the Gramian this
reads ``G a = c (||g_k||)_k`` for some scalar c, so (the paper's closed form, rewritten)

    a = G^{-1} n / (1^T G^{-1} n),     n = (||g_1||, ..., ||g_K||).

With linearly dependent gradients ``G`` is singular and the paper's inverse does not exist; we
use the pseudo-inverse (the minimum-norm least-squares solution of ``G v = n``), the
generalisation defined by Quinton and Rey ("Jacobian Descent for Multi-Objective Optimization",
2024) and used by torchjd. It equals the paper's solution whenever the gradients are
independent.

Conventions: weights sum to 1, as in the paper and torchjd. A zero gradient gets weight 0. If
``1^T G^+ n`` vanishes (no combination summing to 1 has equal projections), the weights are all
zero, as in torchjd, so the shared parameters get no update from this step. Only the gradient
part (IMTL-G) is implemented here; IMTL-L is a loss-level method of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """Weights summing to 1 that give equal projections on every unit task gradient."""
    g = gramian.detach().double().cpu().numpy()
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    v, *_ = np.linalg.lstsq(g, norms, rcond=1e-12)  # G^+ n, the minimum-norm solution
    total = float(v.sum())
    if not np.isfinite(total) or abs(total) <= 1e-12 * float(np.abs(v).sum()) or total == 0.0:
        return torch.zeros(g.shape[0], dtype=torch.float64)
    return torch.from_numpy(v / total)


@register
class IMTLG(GramianWeighting):
    """Equal projection of the update on every task direction (Liu et al., 2021, IMTL-G)."""

    name = "imtl_g"

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        g = torch.from_numpy(prepared(gramian, self.name))
        return Decision(weights=checked(imtl_g_weights(g), self.name))
