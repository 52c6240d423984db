"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021).

With ``g0`` the mean gradient and ``phi = c ||g0||`` (the paper's ``sqrt(phi)``), the update
maximises the worst task improvement in a ball around ``g0``. Its dual (eq. 4, Algorithm 1) is

    w* = argmin_{w in simplex}  g_w . g0 + phi ||g_w||,     g_w = sum_k w_k g_k,

and the update is ``d = g0 + (phi / ||g_w*||) g_w*``, i.e. coefficients
``1/K + phi w*_k / ||g_w*||``. Everything is computed from the Gramian.

Solving the dual exactly, without a general-purpose solver. On a support ``S`` (the tasks with
``w_k > 0``) the optimality conditions ``b_S + phi G_SS w_S / ||g_w|| = nu 1`` (``b = G 1 / K``,
``b_k = g_k . g0``) and ``sum w_S = 1`` have a closed form: with ``p = G_SS^{-1} 1``,
``r = G_SS^{-1} b_S``, ``P = 1.p``, ``R = 1.r``, ``Q = b_S.r`` and ``D = R^2 - P (Q - phi^2)``,

    w_S = (nu p - r) / sqrt(D),   nu = (R + sqrt(D)) / P,   ||g_w|| = phi / sqrt(D).

For K = 2 this is the whole solution (a quadratic equation, clipped to the segment). For
K > 2 the support is found by a primal active-set method (Nocedal and Wright, Algorithm 16.3,
with the closed form above as the exact subproblem solution; the dual is convex, so each step
to the subproblem's minimiser, or to the first bound on the way, lowers it): drop the task that
blocks a step, add the task whose KKT multiplier is most negative, until the KKT conditions
hold. Each iteration is one K x K solve. It starts from the uniform weights (the whole
support: with gradients that mostly agree the optimum is reached in one solve or a few drops)
and, if a subproblem there has no closed form, again from the best vertex ``w = e_j``.

Every solution found this way is accepted only after an independent check of the dual's KKT
conditions (sufficient, the dual being convex). Fallback, when that check fails, when a
subproblem has no closed form (``G_SS`` singular: linearly dependent
gradients, or ``D <= 0``) or the active set does not settle in ``4K + 10`` iterations: the
former exact method. ``sqrt(q) = min_{tau > 0} q / (2 tau) + tau / 2`` turns the dual into
``min_tau F(tau)`` with ``F(tau) = min_{w in simplex} g_w . g0 + phi (||g_w||^2 / (2 tau) +
tau / 2)``, a QP on the simplex for each tau (solved exactly by :mod:`._qp`); ``F`` is convex
and minimal where ``tau = ||g_w(tau)||``, a root found by bisection (one QP per halving). The
direction ``d`` is unique even when ``w*`` is not (the objective depends on ``w`` only through
``g_w``).

Conventions:

* ``c = 0`` gives exactly the mean gradient (coefficients ``1/K``), and so does ``||g0||``
  below 1e-6 of the gradients' scale (tasks in direct opposition: the dual's data is then
  rounding noise).
* If ``||g_w*|| = 0`` (a convex combination of the gradients vanishes, so ``min_k g_k . d``
  is at most 0 for every d), the dual's value is 0 and, by strong duality, the primal's
  optima are the points of the ball with ``J d >= 0``: a whole set, since the dual no longer
  determines d. We return the one nearest the mean gradient, the centre of the ball: the
  projection of ``g0`` onto the dual cone ``{d : J d >= 0}`` (DualProj's direction, computed by
  :mod:`._dual_cone`), which lies in the ball because the set is not empty. With
  ``J = [[1, 0], [-1, 0], [2, 1]]`` and ``c = 1`` this gives ``J d = (0, 0, 1/3)``. (torchjd
  returns zero there, a point of the set only when ``c >= 1``; the former code returned the
  mean gradient, which is not in the set.)
* ``rescale`` as in the reference code: 0 none, 1 divide by ``1 + c^2`` (default, the reference
  code's default), 2 divide by ``1 + c``. torchjd's CAGrad is ``rescale=0``. The reference code
  multiplies by K once more "to match the sum loss"; we do not: the coefficients are built
  on the *mean* gradient (they sum to ``1 + phi / ||g_w*||`` before rescaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..registry import Param
from ._dual_cone import dual_cone_solve
from ._gramian import checked, prepared
from ._qp import solve_qp
from .base import Decision, GramianWeighting
from .registry import register

RESCALES = (0, 1, 2)


def cagrad_dual(gramian: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``(w*, ||g_w*||)`` for the dual of eq. 4; ``gramian`` should have trace ~1."""
    k = gramian.shape[0]
    b = gramian.sum(axis=1) / k  # g_k . g0
    phi = c * math.sqrt(max(float(gramian.sum()) / k**2, 0.0))  # c ||g0||, as cagrad_weights
    if not phi > 0:
        raise ValueError("cagrad_dual: the mean gradient is zero (or c = 0): no dual to solve")
    if k == 2:
        tries = [lambda: _two_tasks(gramian, b, phi)]
    else:  # from the whole support down, then (if that had no closed form) up from a vertex
        tries = [lambda: _active_set(gramian, b, phi, _uniform(k)),
                 lambda: _active_set(gramian, b, phi, _best_vertex(gramian, b, phi))]
    for attempt in tries:
        found = attempt()
        if found is not None and _is_optimal(gramian, b, phi, found[0]):
            return found
    return _by_bisection(gramian, b, phi)


def _uniform(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def _best_vertex(g: np.ndarray, b: np.ndarray, phi: float) -> np.ndarray:
    """``e_j`` with the smallest ``f(e_j) = b_j + phi ||g_j||``."""
    w = np.zeros(g.shape[0])
    w[int(np.argmin(b + phi * np.sqrt(np.clip(np.diag(g), 0.0, None))))] = 1.0
    return w


def _is_optimal(g: np.ndarray, b: np.ndarray, phi: float, w: np.ndarray) -> bool:
    """The KKT conditions of the dual at ``w`` (sufficient: the dual is convex), checked
    independently of how ``w`` was found, so an ill-conditioned solve cannot slip through."""
    norm = math.sqrt(max(float(w @ g @ w), 0.0))
    if not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1) > 1e-9 or norm <= 1e-12:
        return False  # at ||g_w|| = 0 the dual is not differentiable: leave it to the fallback
    grad = b + phi * (g @ w) / norm
    support = w > 0
    nu = float(np.mean(grad[support]))
    tol = 1e-9 * (1.0 + abs(nu))
    return bool(
        np.max(np.abs(grad[support] - nu)) <= tol
        and np.min(grad[~support] - nu, initial=np.inf) >= -tol
    )


def _on_support(gs: np.ndarray, bs: np.ndarray, phi: float) -> tuple[np.ndarray, float, float]:
    """Closed-form minimiser on the affine set ``sum w_S = 1``: ``(w_S, nu, ||g_w||)``.

    Raises ``np.linalg.LinAlgError`` when there is none (singular ``G_SS`` or ``D <= 0``).
    """
    pr = np.linalg.solve(gs, np.stack([np.ones_like(bs), bs], axis=1))
    p, r = pr[:, 0], pr[:, 1]
    big_p, big_r, big_q = float(p.sum()), float(r.sum()), float(bs @ r)
    disc = big_r * big_r - big_p * (big_q - phi * phi)
    if not (big_p > 0 and disc > 0 and np.isfinite(disc)):
        raise np.linalg.LinAlgError("no interior minimiser on this support")
    root = math.sqrt(disc)
    nu = (big_r + root) / big_p
    return (nu * p - r) / root, nu, phi / root


def _two_tasks(g: np.ndarray, b: np.ndarray, phi: float) -> tuple[np.ndarray, float] | None:
    """K = 2: ``w = (a, 1 - a)``; the stationarity condition is a quadratic equation in a."""
    a_coef = float(g[0, 0] - 2 * g[0, 1] + g[1, 1])  # ||g1 - g2||^2
    b_coef = float(g[0, 1] - g[1, 1])  # (g1 - g2) . g2
    c_coef = float(g[1, 1])  # ||g2||^2
    if a_coef <= 1e-14 * (g[0, 0] + g[1, 1]):
        return None  # (almost) equal gradients: leave it to the general method
    # f(a) = b2 + a (b1 - b2) + phi sqrt(q(a)), q(a) = A a^2 + 2 B a + C = ((A a + B)^2 + D) / A.
    # f'(a) = 0  <=>  s / sqrt((s^2 + D) / A) = r  with  s = A a + B,  r = (b2 - b1) / phi.
    r = float(b[1] - b[0]) / phi
    d = max(a_coef * c_coef - b_coef * b_coef, 0.0)
    if r * r >= a_coef:  # f' keeps one sign on the segment: the minimum is at an end
        a = 1.0 if r > 0 else 0.0
    else:
        s = r * math.sqrt(d / (a_coef - r * r))
        a = min(max((s - b_coef) / a_coef, 0.0), 1.0)  # f is convex: clip to the segment
    w = np.array([a, 1.0 - a])
    return w, math.sqrt(max(float(w @ g @ w), 0.0))


def _active_set(
    g: np.ndarray, b: np.ndarray, phi: float, start: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """Primal active-set method on the simplex with closed-form subproblems (module docstring),
    from the feasible point ``start``; ``None`` where a subproblem has no closed form.

    Two starts are tried. The uniform weights (the whole support): with gradients that mostly
    agree, as a shared trunk's tend to, the optimum's support is all or most tasks, reached in
    one solve or a few drops (one solve each) instead of K additions. The best vertex: a
    support of one task always has its closed form, while large supports may have none (the
    dual can be unbounded below on their affine hull), so from there the support is grown."""
    k = g.shape[0]
    w = start.copy()
    free = w > 0
    for _ in range(4 * k + 10):
        try:
            ys, nu, norm = _on_support(g[np.ix_(free, free)], b[free], phi)
        except np.linalg.LinAlgError:
            return None
        y = np.zeros(k)
        y[free] = ys
        if np.all(ys >= 0):
            w = y
            # Multipliers of the bounds w_j >= 0 of the tasks outside the support.
            lam = b + phi * (g @ w) / norm - nu
            outside = np.flatnonzero(~free)
            if outside.size == 0 or lam[outside].min() >= -1e-12:
                return w, norm
            free[outside[int(np.argmin(lam[outside]))]] = True
            continue
        # Step towards y until the first weight reaches 0; that task leaves the support.
        step = y - w
        shrinking = np.flatnonzero(free & (step < 0))
        ratios = -w[shrinking] / step[shrinking]
        j = int(np.argmin(ratios))
        w = np.maximum(w + min(float(ratios[j]), 1.0) * step, 0.0)
        w[shrinking[j]] = 0.0
        free[shrinking[j]] = False
        w /= w.sum()
    return None


def _by_bisection(gramian: np.ndarray, b: np.ndarray, phi: float) -> tuple[np.ndarray, float]:
    """The fallback: a 1-D root search over ``tau = ||g_w||``, one simplex QP per evaluation."""
    k = gramian.shape[0]
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
    # Bisection keeping the bracket's signs as found (Brent's method re-evaluates the ends,
    # and near-degenerate QPs can then disagree with themselves by rounding).
    lo, hi = tau_lo, tau_hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if hi - lo <= 1e-14 * tau_hi:
            break
        if mid - norm(inner(mid)) < 0:
            lo = mid
        else:
            hi = mid
    w = inner(0.5 * (lo + hi))
    return w, norm(w)


def cagrad_weights(gramian: Tensor, c: float, rescale: int = 1) -> Tensor:
    """Coefficients of the CAGrad update over the task gradients (see the module docstring)."""
    g = gramian.detach().double().cpu().numpy()
    k = g.shape[0]
    weights = np.full(k, 1.0 / k)
    trace = float(np.trace(g))
    gn = g / trace if trace > 0 else g  # the coefficients are invariant to the gradients' scale
    # ||g0|| from the normalised Gramian, exactly as cagrad_dual computes it: with g0 ~ 0 (tasks
    # in direct opposition) the radius phi = c ||g0|| vanishes and the update is the mean.
    phi = c * math.sqrt(max(float(gn.sum()) / k**2, 0.0))
    # Below ||g0|| = 1e-6 (gradients normalised to unit trace) the mean gradient is zero to
    # working precision: the dual's data b = G 1 / K is then rounding noise, and so would be
    # its solution. The update is the mean (the centre of the ball) there.
    if c > 0 and trace > 0 and phi > 1e-6 * c:
        w, gw_norm = cagrad_dual(gn, c)
        if gw_norm > 1e-8 * math.sqrt(float(np.max(np.diag(gn)))):
            weights = weights + (phi / gw_norm) * w
        else:  # the dual's value is 0: the optimum nearest g0 (module docstring)
            weights = dual_cone_solve(gn, weights[None, :])[0]
    factor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return torch.from_numpy(weights / factor)


@register
class CAGrad(GramianWeighting):
    """Best worst-task improvement near the mean gradient (Liu et al., 2021, Algorithm 1)."""

    name = "cagrad"
    params: ClassVar[dict[str, Param]] = {
        "c": Param("float", 0.4, "radius of the ball around the mean gradient", low=0.0),
        "rescale": Param("choice", 1, "rescaling of the update (the reference code's 0, 1, 2)",
                         choices=RESCALES),
    }

    def __init__(self, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__()
        self.c = c
        self.rescale = rescale

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        g = torch.from_numpy(prepared(gramian, self.name))
        return Decision(weights=checked(cagrad_weights(g, float(self.c), self.rescale), self.name))
