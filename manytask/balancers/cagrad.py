"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021).

With ``g0`` the mean gradient and ``phi = c ||g0||`` (the paper's ``sqrt(phi)``), the update
maximises the worst task improvement in a ball around ``g0``. Its dual (eq. 4, Algorithm 1) is

    w* = argmin_{w in simplex}  g_w . g0 + phi ||g_w||,     g_w = sum_k w_k g_k,

and the update is ``d = g0 + (phi / ||g_w*||) g_w*``, i.e. coefficients
``1/K + phi w*_k / ||g_w*||``. Everything is computed from the Gramian.

Solving the dual exactly, without a general-purpose solver: ``sqrt(q) = min_{tau > 0}
q / (2 tau) + tau / 2``, so the dual is ``min_tau F(tau)`` with
``F(tau) = min_{w in simplex} g_w . g0 + phi (||g_w||^2 / (2 tau) + tau / 2)``. For fixed tau the
inner problem is a QP on the simplex (solved exactly by :mod:`._qp`); ``F`` is convex in tau
(a partial minimisation of a jointly convex function) and, by the envelope theorem, minimal
where ``tau = ||g_w(tau)||``: a root bracketed in ``(0, max_k ||g_k||]`` and found by Brent's
method (about ten QP solves, each warm-started from the last). The direction ``d`` is unique
even when ``w*`` is not (the objective depends on ``w`` only through ``g_w``).

Conventions:

* ``c = 0`` gives exactly the mean gradient (coefficients ``1/K``). If ``||g_w*|| = 0`` (a
  convex combination of the gradients vanishes, so no direction improves every task) the mean
  gradient is returned too (the centre of the ball; torchjd returns zero there).
* ``rescale`` as in the reference code: 0 none, 1 divide by ``1 + c^2`` (default, the reference
  code's default), 2 divide by ``1 + c``. torchjd's CAGrad is ``rescale=0``. The reference code
  multiplies by K once more "to match the sum loss"; we do not: the coefficients are built
  on the *mean* gradient (they sum to ``1 + phi / ||g_w*||`` before rescaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from ._qp import solve_qp
from .base import Balancer, Decision
from .registry import check_number, register

RESCALES = (0, 1, 2)


def cagrad_dual(gramian: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``(w*, ||g_w*||)`` for the dual of eq. 4; ``gramian`` should have trace ~1."""
    k = gramian.shape[0]
    b = gramian.sum(axis=1) / k  # g_k . g0
    phi = c * math.sqrt(max(float(b.sum()) / k, 0.0))  # c ||g0||, ||g0||^2 = 1^T G 1 / K^2
    tau_hi = math.sqrt(max(float(np.max(np.diag(gramian))), 0.0))

    last = [np.full(k, 1.0 / k)]  # warm start: successive QPs differ only in tau

    def inner(tau: float) -> np.ndarray:
        w = solve_qp(gramian, (tau / phi) * b, lower=0.0, total=1.0, start=last[0]).x
        w = np.maximum(w, 0.0)
        last[0] = w / w.sum()
        return last[0]

    def norm(w: np.ndarray) -> float:
        return math.sqrt(max(float(w @ gramian @ w), 0.0))

    # By the envelope theorem F'(tau) = phi/2 (1 - ||g_w(tau)||^2 / tau^2): F is minimal where
    # tau = ||g_w(tau)||, and F' changes sign once (F is convex), so bracket that root.
    tau_lo = 1e-9 * tau_hi
    w_lo = inner(tau_lo)
    if tau_lo - norm(w_lo) >= 0:  # minimum at tau -> 0: some g_w vanishes
        return w_lo, norm(w_lo)
    w_hi = inner(tau_hi)
    if tau_hi - norm(w_hi) <= 0:  # only possible with equality: ||g_w|| <= max_k ||g_k||
        return w_hi, norm(w_hi)
    tau = brentq(lambda t: t - norm(inner(t)), tau_lo, tau_hi, xtol=1e-15 * tau_hi, rtol=1e-14)
    w = inner(tau)
    return w, norm(w)


def cagrad_weights(gramian: Tensor, c: float, rescale: int = 1) -> Tensor:
    """Coefficients of the CAGrad update over the task gradients (see the module docstring)."""
    g = gramian.detach().double().cpu().numpy()
    k = g.shape[0]
    weights = np.full(k, 1.0 / k)
    trace = float(np.trace(g))
    g0_sq = float(g.sum()) / k**2
    if c > 0 and trace > 0 and g0_sq > 1e-24 * trace:
        gn = g / trace  # the coefficients are invariant to the scale of the gradients
        w, gw_norm = cagrad_dual(gn, c)
        phi = c * math.sqrt(max(float(gn.sum()) / k**2, 0.0))
        if gw_norm > 1e-8 * math.sqrt(float(np.max(np.diag(gn)))):
            weights = weights + (phi / gw_norm) * w
    factor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return torch.from_numpy(weights / factor)


@register
class CAGrad(Balancer):
    """Best worst-task improvement near the mean gradient (Liu et al., 2021, Algorithm 1)."""

    name = "cagrad"
    requires = "gramian"

    def __init__(self, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__()
        check_number("cagrad", "c", c, low=0.0)
        check_number("cagrad", "rescale", rescale, integer=True)
        if rescale not in RESCALES:
            raise ValueError(f"cagrad: rescale must be one of {list(RESCALES)}, got {rescale!r}")
        self.c = c
        self.rescale = rescale

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor | None) -> Decision:
        if gramian is None:
            raise ValueError("cagrad needs the Gramian of the task gradients")
        return Decision(weights=cagrad_weights(gramian, float(self.c), self.rescale))
