"""Solve ``G w = w^(-p)`` for ``w > 0``: the weights of Nash-MTL (p = 1) and FairGrad (p = 1/alpha).

These are the stationarity conditions of the strictly convex function (for ``G`` positive
semi-definite and ``p > 0``)

    f(w) = 1/2 w^T G w - phi(w),   phi(w) = sum_k log w_k  (p = 1)
                                   phi(w) = sum_k w_k^(1-p) / (1-p)  (p != 1),

so we minimise ``f`` by damped Newton's method (Hessian ``G + p diag(w^(-p-1))``, positive
definite on ``w > 0``), with a fraction-to-the-boundary rule that keeps ``w > 0`` and a
backtracking (Armijo) line search, each Newton step preceded by the exact minimisation of ``f``
along ``w`` itself (a rescaling, in closed form). Newton converges quadratically near the
solution; the loop is capped at 100 iterations and returns the iterate with the smallest
residual found, so the result is always finite and positive. Once the Newton decrement is below
the rounding of ``f`` itself, the Armijo test can no longer see a decrease (it would halve the
step dozens of times per iteration for nothing), so those last steps are full Newton steps judged
by the residual instead, and the loop stops at the first that does not lower it.

Existence needs care: if a non-negative combination of the gradients vanishes (``G v = 0`` for
some ``v >= 0``), ``f`` is unbounded below along ``v`` and no solution exists. We therefore solve
with ``G + delta I``, ``delta = 1e-10 * mean(diag G)``, which always has a solution and changes a
well-conditioned one by about ``1e-10`` relative. Tasks whose gradient is zero get weight 0 (they
have nothing to bargain with) and are left out of the system.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_MAX_ITER = 100
_REGULARISATION = 1e-10
# Relative size of a decrease of f that float64 can still resolve.
_ROUNDING = 1e-12


def fair_weights(gramian: NDArray[np.float64], p: float) -> NDArray[np.float64]:
    """Positive ``w`` with ``(G + delta I) w = w^(-p)`` (0 for zero gradients); see the module."""
    if not p > 0:
        raise ValueError(f"fair_weights: p must be > 0, got {p}")
    g = 0.5 * (gramian + gramian.T)
    k = g.shape[0]
    diag = np.clip(np.diag(g), 0.0, None)
    live = diag > 1e-12 * max(float(diag.max(initial=0.0)), 1e-300)
    weights = np.zeros(k)
    if not live.any():
        return weights
    sub = g[np.ix_(live, live)]
    # Solve on the Gramian scaled to unit mean diagonal; if G = s Gn then w = s^(-1/(1+p)) wn.
    scale = float(np.mean(np.diag(sub)))
    gn = sub / scale + _REGULARISATION * np.eye(sub.shape[0])
    weights[live] = _newton(gn, p) * scale ** (-1.0 / (1.0 + p))
    return weights


def _objective(g: NDArray[np.float64], w: NDArray[np.float64], p: float) -> float:
    barrier = np.sum(np.log(w)) if p == 1.0 else np.sum(w ** (1.0 - p)) / (1.0 - p)
    return float(0.5 * w @ g @ w - barrier)


def _newton(g: NDArray[np.float64], p: float) -> NDArray[np.float64]:
    w = np.diag(g) ** (-1.0 / (1.0 + p))  # exact when the gradients are orthogonal
    best, best_res = w.copy(), np.inf
    unguarded = False  # the last step was a full Newton step below f's rounding
    for _ in range(_MAX_ITER):
        # Exact minimisation of f along w itself (t w, t > 0: t = (sum w^(1-p) / w^T G w)^(1/(1+p)))
        # first: it lowers f, and where the solution is far out in scale (the ridge case, w of
        # 1e5) it gets there in one step instead of dozens of damped Newton steps.
        quad = float(w @ g @ w)
        if quad > 0:
            w = w * (float(np.sum(w ** (1.0 - p))) / quad) ** (1.0 / (1.0 + p))
        target = w ** (-p)
        grad = g @ w - target
        res = float(np.linalg.norm(grad) / np.linalg.norm(target))
        if res < best_res:
            best, best_res = w.copy(), res
        elif unguarded:
            break  # at the rounding floor of the residual
        if res < 1e-14:
            break
        hess = g + np.diag(p * w ** (-p - 1.0))
        try:
            step = np.linalg.solve(hess, -grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
        t = 1.0
        shrinking = step < 0
        if shrinking.any():  # stay strictly inside w > 0
            t = min(1.0, 0.99 * float(np.min(-w[shrinking] / step[shrinking])))
        f0, slope = _objective(g, w, p), float(grad @ step)
        unguarded = -slope <= _ROUNDING * (1.0 + abs(f0))
        if unguarded:
            w = w + t * step
            continue
        for _ in range(60):
            if _objective(g, w + t * step, p) <= f0 + 0.25 * t * slope:
                break
            t *= 0.5
        w = w + t * step
    return best
