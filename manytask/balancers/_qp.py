"""A small, exact quadratic-program solver for the K x K problems of gradient balancing.

Solves, in NumPy float64,

    min_x  1/2 x^T Q x + c^T x   subject to   x >= lower   and (optionally)   sum(x) = total

with ``Q`` symmetric positive semi-definite (possibly singular: Gramians of linearly dependent
gradients are), ``lower`` a vector whose entries may be ``-inf`` (unbounded variables).
MGDA (simplex: ``lower = 0``, ``total = 1``), UPGrad and DualProj (``lower = u``, no sum) are
instances.

Method: the primal active-set method for convex QPs (Nocedal and Wright, *Numerical
Optimization*, 2nd ed., Algorithm 16.3). Each equality-constrained subproblem on the free
variables is solved by least squares, so a singular ``Q`` is fine: when the subproblem's KKT
system is inconsistent, its least-squares residual is a direction of zero curvature along which
the objective decreases linearly, and we line-search along it to the nearest bound. Every step
is an exact line search, so the objective never increases.

The active-set loop is capped at ``50 * n + 100`` iterations (it needs about ``n`` on these
problems). If the cap is hit or the final KKT residual exceeds ``1e-8``, an accelerated
projected-gradient method (FISTA with adaptive restart, at most 5,000 iterations, stopping
earlier once a plain projected-gradient step no longer lowers the objective) is run as a
fallback and the better of the two points is returned. The result never contains NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

_ACTIVE_SET_TOL = 1e-8  # KKT residual above which the fallback is tried
_FISTA_MAX_ITER = 5_000


@dataclass(frozen=True)
class QPResult:
    """Solution ``x``, its KKT residual (see :func:`kkt_residual`), and how it was found."""

    x: Array
    kkt_residual: float
    iterations: int
    method: str  # "active-set" or "projected-gradient"


def solve_qp(
    Q: ArrayLike,
    c: ArrayLike | None = None,
    *,
    lower: ArrayLike | float | None = None,
    total: float | None = None,
    start: ArrayLike | None = None,
) -> QPResult:
    """Minimise ``1/2 x^T Q x + c^T x`` s.t. ``x >= lower`` and, if given, ``sum(x) = total``.

    Args:
        Q: (n, n) symmetric positive semi-definite matrix (symmetrised here).
        c: (n,) linear term; zero when omitted.
        lower: lower bounds, a scalar or an (n,) vector; ``-inf`` entries (or ``None``, all
            unbounded) leave a variable free.
        total: if given, the variables must sum to it.
        start: a warm start (e.g. the solution of a nearby problem), projected onto the
            feasible set; its entries at their bound form the initial active set.

    Raises:
        ValueError: malformed input, an infeasible problem, or an objective unbounded below.
    """
    Qa, ca, lo = _check(Q, c, lower)
    n = Qa.shape[0]
    if total is not None and not np.isfinite(total):
        raise ValueError(f"solve_qp: total must be finite, got {total}")
    # Scale to unit diagonal magnitude so that the tolerances below are relative.
    scale = float(np.max(np.abs(np.diag(Qa)))) if n else 0.0
    if scale <= 0.0:
        scale = max(float(np.max(np.abs(ca))) if n else 0.0, 1.0)
    Qs, cs = Qa / scale, ca / scale

    x0 = _feasible_start(lo, total)
    if start is not None:
        guess = np.asarray(start, dtype=np.float64).reshape(-1)
        if guess.shape != (n,) or not np.all(np.isfinite(guess)):
            raise ValueError(f"solve_qp: start must be a finite vector of length {n}")
        x0 = _project(guess, lo, total)
    x, iterations, ok = _active_set(Qs, cs, lo, total, x0)
    res = kkt_residual(Qs, cs, x, lower=lo, total=total)
    method = "active-set"
    if not ok or res > _ACTIVE_SET_TOL:
        xf, it_f = _fista(Qs, cs, lo, total, x if np.all(np.isfinite(x)) else x0)
        res_f = kkt_residual(Qs, cs, xf, lower=lo, total=total)
        iterations += it_f
        if res_f < res or not np.all(np.isfinite(x)):
            x, res, method = xf, res_f, "projected-gradient"
    return QPResult(x=x, kkt_residual=float(res), iterations=iterations, method=method)


def kkt_residual(
    Q: ArrayLike,
    c: ArrayLike | None,
    x: ArrayLike,
    *,
    lower: ArrayLike | float | None = None,
    total: float | None = None,
) -> float:
    """``max |x - P(x - (Qx + c))|``, P the projection on the feasible set: 0 iff x is optimal.

    This projected-gradient residual is the standard first-order optimality measure of a convex
    problem over a convex set; it is in the units of ``x`` when ``Q`` has unit diagonal scale.
    """
    Qa, ca, lo = _check(Q, c, lower)
    xa = np.asarray(x, dtype=np.float64)
    return float(np.max(np.abs(xa - _project(xa - (Qa @ xa + ca), lo, total)), initial=0.0))


# ---------------------------------------------------------------------------- internals
def _check(
    Q: ArrayLike, c: ArrayLike | None, lower: ArrayLike | float | None
) -> tuple[Array, Array, Array]:
    Qa = np.asarray(Q, dtype=np.float64)
    if Qa.ndim != 2 or Qa.shape[0] != Qa.shape[1]:
        raise ValueError(f"solve_qp: Q must be a square matrix, got shape {Qa.shape}")
    if not np.all(np.isfinite(Qa)):
        raise ValueError("solve_qp: Q contains NaN or inf")
    n = Qa.shape[0]
    Qa = 0.5 * (Qa + Qa.T)
    ca = np.zeros(n) if c is None else np.asarray(c, dtype=np.float64).reshape(-1)
    if ca.shape != (n,) or not np.all(np.isfinite(ca)):
        raise ValueError(f"solve_qp: c must be a finite vector of length {n}")
    lo = (
        np.full(n, -np.inf)
        if lower is None
        else np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy()
    )
    if np.any(np.isnan(lo)) or np.any(lo == np.inf):
        raise ValueError("solve_qp: lower bounds must be finite or -inf")
    return Qa, ca, lo


def _feasible_start(lo: Array, total: float | None) -> Array:
    bounded = np.isfinite(lo)
    x = np.where(bounded, lo, 0.0)
    if total is None:
        return x
    slack = total - x.sum()
    if bounded.all():
        if slack < -1e-12 * max(1.0, abs(total)):
            raise ValueError(
                f"solve_qp: infeasible, the lower bounds sum to {x.sum()} > total={total}"
            )
        return x + max(slack, 0.0) / x.size  # spread evenly: symmetric problems stay symmetric
    x[~bounded] += slack / int((~bounded).sum())
    return x


def _active_set(
    Q: Array, c: Array, lo: Array, total: float | None, x0: Array
) -> tuple[Array, int, bool]:
    n = Q.shape[0]
    x = x0.copy()
    bounded = np.isfinite(lo)
    working = bounded & (x <= lo)
    eq = total is not None
    at_sub_min = False  # the last step reached the subproblem's minimiser: skip re-solving it
    for it in range(50 * n + 100):
        g = Q @ x + c
        free = ~working
        nf = int(free.sum())
        d = np.zeros(n)
        ray = False
        if nf and not at_sub_min:
            d_free, ray = _subproblem(Q[np.ix_(free, free)], g[free], eq)
            d[free] = d_free
        if ray and float(g @ d) > -1e-12 * float(np.linalg.norm(g) * np.linalg.norm(d)):
            ray, d = False, np.zeros(n)  # a numerically flat direction: nothing to gain along it
        if ray or np.max(np.abs(d), initial=0.0) > 1e-15 * (1.0 + np.max(np.abs(x))):
            x, blocking, full = _line_search(Q, g, x, d, lo, bounded, free, ray)
            if blocking is not None:
                working[blocking] = True
            at_sub_min = full
            continue
        at_sub_min = False
        # At the subproblem's minimiser: check the multipliers of the active bounds.
        if not working.any():
            return x, it, True
        # Multiplier of sum(x) = total: from the free variables' stationarity, or, with all
        # variables at a bound (a single feasible point), the value that makes every lam >= 0.
        nu = 0.0
        if eq:
            nu = -float(np.mean(g[free])) if nf else -float(np.min(g[working]))
        lam = g[working] + nu
        worst = int(np.argmin(lam))
        if lam[worst] >= -1e-13:
            return x, it, True
        working[np.flatnonzero(working)[worst]] = False
    return x, 50 * n + 100, False


def _subproblem(Qf: Array, gf: Array, eq: bool) -> tuple[Array, bool]:
    """Step on the free variables; ``ray`` when the subproblem is unbounded along it."""
    nf = gf.size
    if eq:
        A = np.zeros((nf + 1, nf + 1))
        A[:nf, :nf] = Qf
        A[:nf, nf] = 1.0
        A[nf, :nf] = 1.0
        b = np.concatenate([-gf, [0.0]])
    else:
        A, b = Qf, -gf
    z, *_ = np.linalg.lstsq(A, b, rcond=1e-12)
    r = b - A @ z
    # For symmetric A the residual of least squares lies in null(A): a direction d (its first nf
    # entries) with Q d = const, sum(d) = 0 and g.d = -|r|^2 < 0, i.e. zero curvature, descent.
    if np.linalg.norm(r) > 1e-9 * max(1.0, float(np.linalg.norm(b))):
        return r[:nf], True
    return z[:nf], False


def _line_search(
    Q: Array, g: Array, x: Array, d: Array, lo: Array, bounded: Mask, free: Mask, ray: bool
) -> tuple[Array, int | None, bool]:
    slope, curv = float(g @ d), float(d @ Q @ d)
    step = 1.0  # the Newton step reaches the subproblem's minimiser
    if ray:  # exact line search along a direction of (almost) zero curvature
        step = -slope / curv if curv > 1e-14 * float(d @ d) else np.inf
    blocking = None
    moving = free & bounded & (d < 0)
    if moving.any():
        idx = np.flatnonzero(moving)
        ratios = (lo[idx] - x[idx]) / d[idx]
        k = int(np.argmin(ratios))
        if ratios[k] < step:
            step, blocking = max(float(ratios[k]), 0.0), int(idx[k])
    if not np.isfinite(step):
        raise ValueError("solve_qp: the objective is unbounded below on the feasible set")
    x = x + step * d
    if blocking is not None:
        x[blocking] = lo[blocking]
    return x, blocking, blocking is None and not ray


def _project(y: Array, lo: Array, total: float | None) -> Array:
    """Euclidean projection on ``{x >= lo}``, intersected with ``{sum x = total}`` if given."""
    bounded = np.isfinite(lo)
    if total is None:
        return np.where(bounded, np.maximum(y, lo), y)
    # x(nu) = max(y - nu, lo) is non-increasing in nu; find nu with sum x(nu) = total. The sum
    # is piecewise linear with breakpoints y_i - lo_i, so locate the segment and interpolate.
    n_free = int((~bounded).sum())
    if n_free == y.size:
        return y - (y.sum() - total) / y.size
    breaks = np.sort((y - lo)[bounded])
    # s(nu) at every breakpoint at once (an n x n array: these problems are small, and a Python
    # loop here made every projected-gradient iteration cost tens of microseconds per task).
    yb, lob = y[bounded], lo[bounded]
    values = np.maximum(yb[None, :] - breaks[:, None], lob[None, :]).sum(axis=1)
    values += float(y[~bounded].sum()) - n_free * breaks
    if n_free == 0 and total < values[-1]:  # infeasible: sum(lo) > total; best effort
        return lo.copy()
    # values is non-increasing in the breakpoint; find the first breakpoint with s <= total.
    j = int(np.searchsorted(-values, -total, side="left"))
    if j == 0:
        slope = bounded.sum() + n_free  # every variable moves with nu left of the first break
        nu = breaks[0] - (total - values[0]) / slope
    elif j == breaks.size:
        nu = breaks[-1] + (values[-1] - total) / n_free
    else:
        lo_b, hi_b = breaks[j - 1], breaks[j]
        v0, v1 = values[j - 1], values[j]
        nu = lo_b if v0 == v1 else lo_b + (v0 - total) * (hi_b - lo_b) / (v0 - v1)
    return np.where(bounded, np.maximum(y - nu, lo), y - nu)


def _fista(Q: Array, c: Array, lo: Array, total: float | None, x0: Array) -> tuple[Array, int]:
    """Accelerated projected gradient (Beck and Teboulle, 2009) with adaptive restart."""
    lip = max(float(np.linalg.eigvalsh(Q)[-1]), 1e-12)
    x = _project(x0, lo, total)
    y, t = x.copy(), 1.0
    f_prev = np.inf
    it = 0
    while it < _FISTA_MAX_ITER:
        it += 1
        x_new = _project(y - (Q @ y + c) / lip, lo, total)
        f_new = float(0.5 * x_new @ Q @ x_new + c @ x_new)
        if f_new > f_prev:  # restart the momentum when the objective goes up
            if t == 1.0:  # already restarted: no progress left at this precision
                break
            y, t = x.copy(), 1.0
            continue
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t, f_prev = x_new, t_new, f_new
        if it % 25 == 0 and kkt_residual(Q, c, x, lower=lo, total=total) < 1e-12:
            break
    return x, it


def simplex_projection(y: ArrayLike, total: float = 1.0) -> Array:
    """Euclidean projection of ``y`` onto ``{x >= 0, sum x = total}`` (exact, O(n^2))."""
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(ya)):
        raise ValueError("simplex_projection: y contains NaN or inf")
    return np.maximum(_project(ya, np.zeros(ya.size), total), 0.0)
