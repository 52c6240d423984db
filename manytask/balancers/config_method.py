"""ConFIG, conflict-free inverse gradients (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free
Training of Physics Informed Neural Networks", ICLR 2025 / arXiv:2408.11104, eq. 2).

With unit gradients ``u_k = g_k / ||g_k||`` (rows of ``U``), the direction ``g_v = U^+ 1`` is the
minimum-norm vector with ``u_k . g_v = 1`` for every k (equal, positive cosine with every task,
whenever the system is consistent); the update is its unit vector scaled by the sum of the
projections of the task gradients on it:

    d = (sum_k g_k . e) e,   e = g_v / ||g_v||.

From the Gramian: ``U^+ 1 = U^T (U U^T)^+ 1``, so ``g_v = sum_k beta_k g_k`` with
``beta = diag(1/||g_k||) C^+ 1``, ``C`` the cosine matrix, and the coefficients of ``d`` are
``beta (1^T G beta) / (beta^T G beta)``.

Conventions: the "sum of projections" length (the paper's default; torchjd's ConFIG is the
same, so weights are directly comparable), equal task preferences. A zero gradient has no
direction: it is left out of ``U`` (weight 0 in ``beta``) but still counts in the length, as in
the reference code (whose unit vectors of zero gradients are zero). Only an exactly zero
gradient is left out: one of 1e-13 of the largest norm keeps its direction (the former
cut-off at 1e-12 of the largest dropped it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register


def config_weights(gramian: Tensor) -> Tensor:
    """Coefficients of the ConFIG update over the task gradients (see the module docstring)."""
    g = gramian.detach().double().cpu().numpy()
    k = g.shape[0]
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    # Every non-zero gradient has a direction, however small (the Gramian is float64 and made
    # PSD relative to each task's scale, so its cosines are accurate at any ratio of norms).
    live = norms > 0
    inv = np.where(live, 1.0 / np.where(live, norms, 1.0), 0.0)
    cosine = g * inv[:, None] * inv[None, :]
    ones = live.astype(np.float64)
    c, *_ = np.linalg.lstsq(cosine, ones, rcond=1e-12)  # C^+ 1 (minimum-norm)
    beta = inv * c
    sq = float(beta @ g @ beta)  # ||g_v||^2
    if not sq > 0:
        return torch.zeros(k, dtype=torch.float64)
    return torch.from_numpy(beta * float(np.sum(g @ beta)) / sq)


@register
class ConFIG(GramianWeighting):
    """Equal-cosine direction with the summed projection length (Liu et al., 2024, eq. 2)."""

    name = "config"

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        g = torch.from_numpy(prepared(gramian, self.name))
        return Decision(weights=checked(config_weights(g), self.name))
