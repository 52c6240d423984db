"""Aligned-MTL (Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023, Section 4 and Algorithm 1).

The gradient matrix ``J`` (K x P) is replaced by ``J_hat = B J``, whose rows are orthogonal and
of equal norm, i.e. the linear system of gradients has condition number 1. From the eigen-
decomposition ``G = V diag(lambda) V^T`` of the Gramian, keeping the ``r`` eigenvalues above
``max(lambda) K eps`` (the rank), with ``eps`` that of float32 (1.2e-7),

    B = sqrt(lambda_min) V_r diag(lambda_r)^{-1/2} V_r^T,   so that   B G B = lambda_min V_r V_r^T,

and the update is ``sum_k w_k (J_hat)_k = (B w)^T J``: the coefficients are ``B w``.

The rank tolerance is the reference code's, ``max(lambda) K eps`` with ``eps`` the machine
epsilon of the Gramian's dtype, and that Gramian is a product of float32 gradients: so we use
float32's ``eps`` although our Gramian is accumulated in float64. With float64's (2.2e-16), two
nearly identical tasks (``g`` and ``g + delta``, ``||delta|| = 1e-5 ||g||``, an eigenvalue
ratio of about 1e-11, within the rounding of the float32 gradients themselves) counted as rank
two, and the noise direction ``delta`` set the common norm, shrinking the update by 1e5.

Conventions: task weights ``w = 1`` (the summed loss, as LibMTL; torchjd's AlignedMTL uses
``w = 1/K``, i.e. ours divided by K). ``scale`` picks the eigenvalue that sets the common norm:
``"min"`` (the paper's sigma_min, default), ``"median"``, or ``"mean"`` (the reference code's
"rmse" mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register

SCALES = ("min", "median", "mean")
RANK_EPS = float(np.finfo(np.float32).eps)  # the gradients' precision, not the Gramian's


def balance_transformation(gramian: Tensor, scale: str = "min") -> np.ndarray:
    """The K x K matrix ``B`` of Algorithm 1 (identity when every gradient is zero)."""
    g = gramian.detach().double().cpu().numpy()
    k = g.shape[0]
    lam, vec = np.linalg.eigh(0.5 * (g + g.T))
    tol = float(lam.max(initial=0.0)) * k * RANK_EPS
    keep = lam > tol
    if not keep.any():
        return np.eye(k)
    lam, vec = lam[keep], vec[:, keep]
    common = {"min": lam.min(), "median": np.median(lam), "mean": lam.mean()}[scale]
    return np.sqrt(common) * (vec / np.sqrt(lam)) @ vec.T


@register
class AlignedMTL(GramianWeighting):
    """Gradients aligned to an orthogonal, equal-norm system (Senushkin et al., 2023, Alg. 1)."""

    name = "aligned_mtl"
    params: ClassVar[dict[str, Param]] = {
        "scale": Param("choice", "min", "which singular value sets the scale", choices=SCALES),
    }

    def __init__(self, scale: str = "min") -> None:
        super().__init__()
        self.scale = scale

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        g = torch.from_numpy(prepared(gramian, self.name))
        b = balance_transformation(g, self.scale)
        return Decision(weights=checked(b @ np.ones(len(tasks)), self.name))
