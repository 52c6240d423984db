"""The Gramian as the solvers take it: float64, finite, symmetric, positive semi-definite.

Every Gramian-level method starts from :func:`prepared` and ends with :func:`checked`, so that
they all behave alike on degenerate inputs:

* **Not finite** (gradients that overflowed even the float64 Gramian, or NaN): a
  :class:`NonFiniteGradientError`, a ``FloatingPointError`` whose one-line message names the
  method. A finite Gramian of any scale (gradients of 1e-20 or 1e19 included: the Gramian is
  accumulated in float64, see :func:`manytask.gradients.gramian_of`) gets a finite answer:
  every solver rescales internally, and the weights are checked before they are returned.
  Jacobian methods raise the same error when their statistics overflow (ExcessMTL keeps sums
  of squared gradients in the gradients' dtype).
* **Not exactly PSD**: ``G = J J^T`` is PSD, but rounding leaves eigenvalues like -5e-19 that
  make a QP unbounded below. :func:`prepared` symmetrises ``G`` and, if its smallest eigenvalue
  is negative, replaces it by ``V max(Lambda, 0) V^T``, its nearest PSD matrix in the Frobenius
  norm (Higham, "Computing a nearest symmetric positive semidefinite matrix", 1988, Theorem 2.1).
  The change is at most the magnitude of the negative eigenvalue.
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
    if g.size == 0 or not np.any(g):
        return g
    # The smallest eigenvalue decides; eigvalsh costs K^3 / 3, nothing beside the solvers.
    lam = np.linalg.eigvalsh(g)
    if lam[0] >= 0:
        return g
    lam, vec = np.linalg.eigh(g)
    return np.asarray((vec * np.maximum(lam, 0.0)) @ vec.T)


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
