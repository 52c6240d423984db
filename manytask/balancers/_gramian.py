"""The Gramian as the solvers take it: float64, finite, symmetric, positive semi-definite.

Every Gramian-level method starts from :func:`prepared` and ends with :func:`checked`, so that
they all behave alike on degenerate inputs:

* **Not finite** (gradients that overflowed even the float64 Gramian, or NaN): a
  :class:`NonFiniteGradientError`, a ``FloatingPointError`` whose one-line message names the
  method. A finite Gramian of any scale (gradients of 1e-20 or 1e19 included: the Gramian is
  accumulated in float64, see :func:`manytask.engine.gradients.gramian_of`) gets a finite answer:
  every solver rescales internally, and the weights are checked before they are returned.
  Jacobian methods raise the same error when their statistics overflow (ExcessMTL keeps sums
  of squared gradients in the gradients' dtype).
* **Not exactly PSD**: ``G = J J^T`` is PSD, but rounding leaves eigenvalues like -5e-19 that
  make a QP unbounded below. :func:`prepared` symmetrises ``G`` and works on its cosine matrix
  ``C = S^-1 G S^-1`` (``S = diag(||g_k||)``; zero gradients keep zero rows): if the smallest
  eigenvalue of ``C`` is negative, ``C`` is replaced by ``V max(Lambda, 0) V^T``, its nearest
  PSD matrix in the Frobenius norm (Higham, "Computing a nearest symmetric positive
  semidefinite matrix", 1988, Theorem 2.1), and ``G = S C S``. Working on ``C`` keeps the
  repair relative to each task's own scale: entry ``(i, j)`` moves by at most
  ``|lambda_min(C)| ||g_i|| ||g_j||``, so a task whose gradient is 1e-13 of the largest keeps
  its direction (a repair of ``G`` itself would move it by rounding of the largest).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

Array = NDArray[np.float64]


class NonFiniteGradientError(FloatingPointError):
    """Per-task gradient information (the Gramian, a Jacobian method's statistics) or the
    weights computed from it that is not finite; the one-line message names the method."""


def require_finite(gramian: Tensor, method: str) -> None:
    """Raise :class:`NonFiniteGradientError` naming ``method`` unless ``gramian`` is finite.

    For the methods that read only the diagonal (the gradients' norms), which need nothing else
    of :func:`prepared`.
    """
    if not bool(torch.isfinite(gramian.detach()).all()):
        raise NonFiniteGradientError(
            f"{method}: the Gramian of the task gradients is not finite (the gradients overflow "
            "float64 or contain NaN); lower the learning rate or scale the losses"
        )


def prepared(gramian: Tensor | Array, method: str) -> Array:
    """``gramian`` as a finite, symmetric, PSD float64 NumPy array (see the module docstring)."""
    if isinstance(gramian, Tensor):
        g = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        g = np.asarray(gramian, dtype=np.float64)
    require_finite(torch.from_numpy(g), method)
    g = 0.5 * (g + g.T)
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    live = norms > 0
    if not live.any():
        return np.zeros_like(g)
    inv = np.where(live, 1.0 / np.where(live, norms, 1.0), 0.0)
    cos = g * inv[:, None] * inv[None, :]
    cos[np.diag_indices_from(cos)] = live.astype(np.float64)
    # The smallest eigenvalue decides; eigvalsh costs K^3 / 3, nothing beside the solvers.
    lam = np.linalg.eigvalsh(cos)
    if lam[0] >= 0:
        return np.asarray(cos * norms[:, None] * norms[None, :])
    lam, vec = np.linalg.eigh(cos)
    cos = (vec * np.maximum(lam, 0.0)) @ vec.T
    return np.asarray(cos * norms[:, None] * norms[None, :])


def checked(weights: Tensor | Array, method: str) -> Tensor:
    """``weights`` as a float64 tensor; a :class:`NonFiniteGradientError` if any is not finite."""
    w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, Tensor) else weights)
    w = w.to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise NonFiniteGradientError(
            f"{method}: the update computed from the task gradients is not finite (they overflow "
            "their dtype); lower the learning rate or scale the losses"
        )
    return w
