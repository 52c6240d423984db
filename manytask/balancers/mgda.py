"""MGDA, the multiple-gradient descent algorithm (Sener and Koltun, NeurIPS 2018, eq. 3).

The shared update is the minimum-norm point of the convex hull of the task gradients:

    w* = argmin_{w in simplex} || sum_k w_k g_k ||^2 = argmin_{w >= 0, sum w = 1} w^T G w.

Convention: the weights lie on the simplex (they sum to 1), as in the paper, LibMTL and torchjd
(the Nash-MTL and FAMO reference codes scale them to sum to K). For K = 2 the closed form of the
paper's Algorithm 1 is used; for K > 2 the exact QP solver of :mod:`._qp` (to a KKT residual of
about 1e-9, where torchjd's Frank-Wolfe loop stops within about 2% of the optimum).
MGDA-UB (Section 3.3) is this method with ``mode="feature"`` in :func:`manytask.backward`.

``normalization`` rescales each gradient before solving, as in the paper's code
(``gradient_normalizers``): ``"l2"`` divides ``g_k`` by ``||g_k||``, ``"loss"`` by ``L_k``,
``"loss+"`` by ``L_k ||g_k||``, ``"none"`` leaves it. This is applied to the Gramian
(``G_ij / (s_i s_j)``). ``combine`` says which gradients the weights found then combine:
``"raw"`` (default, the paper's code): the original, unnormalised ones, ``sum_k w_k g_k``, so
with ``normalization="l2"`` the update weights the *raw* gradients by the min-norm weights of
the unit ones; ``"normalized"`` (LibMTL): the normalised ones, ``sum_k w_k g_k / s_k``, i.e.
the minimum-norm point of the normalised gradients' hull itself; the reported weights are then
``w_k / s_k`` (over the raw gradients, as always) and no longer sum to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked, prepared
from ._qp import solve_qp
from .base import Decision, GramianWeighting
from .registry import register

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
COMBINES = ("raw", "normalized")


def min_norm_weights(gramian: Tensor) -> Tensor:
    """Simplex weights of the minimum-norm point of the convex hull (float64, sum 1)."""
    g = gramian.detach().double().cpu()
    k = g.shape[0]
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    if k == 2:
        # Algorithm 1 of the paper: gamma minimises ||gamma g1 + (1 - gamma) g2||^2 on [0, 1].
        denom = float(g[0, 0] + g[1, 1] - 2 * g[0, 1])
        gamma = 0.5 if denom <= 0 else min(max(float(g[1, 1] - g[0, 1]) / denom, 0.0), 1.0)
        return torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64)
    result = solve_qp(g.numpy(), lower=0.0, total=1.0)
    # Remove the rounding left by the solver so that the weights lie exactly on the simplex.
    x = np.maximum(result.x, 0.0)
    return torch.from_numpy(x / x.sum())


def gradient_scales(losses: Tensor, gramian: Tensor, normalization: str) -> Tensor:
    """The divisor ``s_k`` of each gradient for the paper's ``normalization`` types."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    norms = torch.where(norms > 0, norms, 1.0)  # a zero gradient stays zero
    loss = losses.detach().double().cpu()
    if normalization in ("loss", "loss+") and bool((loss <= 0).any()):
        bad = int((loss <= 0).nonzero()[0, 0])
        raise ValueError(
            f"mgda: normalization={normalization!r} divides by the losses, which must be "
            f"positive; loss #{bad} is {float(loss[bad])}"
        )
    if normalization == "l2":
        return norms
    if normalization == "loss":
        return loss
    if normalization == "loss+":
        return loss * norms
    return torch.ones_like(norms)


@register
class MGDA(GramianWeighting):
    """Minimum-norm convex combination of the task gradients (Sener and Koltun, 2018, eq. 3)."""

    name = "mgda"
    params: ClassVar[dict[str, Param]] = {
        "normalization": Param("choice", "none", "normalisation before the min-norm problem",
                               choices=NORMALIZATIONS),
        "combine": Param("choice", "raw", "combine the raw gradients with the min-norm weights "
                         "(raw) or the normalised ones, as LibMTL (normalized)",
                         choices=COMBINES),
    }

    def __init__(self, normalization: str = "none", combine: str = "raw") -> None:
        super().__init__()
        self.normalization = normalization
        self.combine = combine

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        g = torch.from_numpy(prepared(gramian, self.name))
        scales = gradient_scales(losses, g, self.normalization)
        weights = min_norm_weights(g / torch.outer(scales, scales))
        if self.combine == "normalized":
            weights = weights / scales
        return Decision(weights=checked(weights, self.name))
