"""Many projections onto the dual cone of the task gradients at once, exactly.

UPGrad needs K of them and DualProj one (Quinton and Rey, "Jacobian Descent for Multi-Objective
Optimization", 2024, Proposition 1): for each row ``u`` of ``U``,

    v = argmin_{v >= u} v^T G v,

so that ``J^T v`` is the projection of ``J^T u`` onto ``{x : J x >= 0}``. With ``z = v - u`` the
optimality conditions form a linear complementarity problem (LCP) with matrix ``G``:

    w = G u + G z,   z >= 0,   w >= 0,   z_j w_j = 0.

It is solved for all rows together by **block principal pivoting** (Judice and Pires, "A block
principal pivoting algorithm for large-scale strictly monotone linear complementarity
problems", Computers & Operations Research 21(5), 1994): guess the set F of coordinates with
``z_j > 0``, solve ``G_FF z_F = -(G u)_F`` exactly, and swap every coordinate that violates
``z >= 0`` or ``w >= 0``; when the number of violations stops decreasing for three rounds, swap
only the violating coordinate of largest index (Murty's rule, which terminates). Each round is
one batched LU solve over all rows, so a step costs a few batched solves instead of K
sequential active-set loops in Python.

When ``G`` is numerically singular (smallest eigenvalue not above ``1e-12`` times its trace,
tested by one Cholesky factorisation: linearly dependent gradients, e.g. more tasks than
dimensions), pivoting is ill-posed. Then,
with ``G = L L^T`` from its eigendecomposition (``L^T`` has one row per positive eigenvalue),
each row is the non-negative least-squares problem

    z = argmin_{z >= 0} || L^T z + L^T u ||^2,

solved by Lawson and Hanson's active-set algorithm ("Solving Least Squares Problems", 1974,
Chapter 23; ``scipy.optimize.nnls``, compiled), which needs no invertible block and stops in
at most ``3K`` iterations. Any row whose pivoting or NNLS does not end, hits a singular
block, or whose final KKT residual exceeds ``1e-10`` (relative) is solved again by the exact
active-set QP solver of :mod:`._qp`, warm-started. The result is always a finite ``v >= u``.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.optimize import nnls

from ._qp import solve_qp

Array = NDArray[np.float64]

_KKT_TOL = 1e-10  # relative to max|u|, with G scaled to unit maximal diagonal
_MIN_EIG = 1e-12  # G with a smaller relative eigenvalue is treated as singular
_BACKUP_ROUNDS = 3  # Judice-Pires: full swaps tolerated without progress before Murty's rule


def dual_cone_solve(gramian: Array, U: Array) -> Array:
    """Rows ``v_b = argmin_{v >= U_b} v^T G v`` for every row of ``U`` (shape (B, K))."""
    G = 0.5 * (gramian + gramian.T)
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    n = G.shape[0]
    scale = float(np.max(np.diag(G), initial=0.0))
    if scale <= 0.0:  # every gradient is zero: the projection of zero is zero, any v >= u works
        return U.copy()
    G = G / scale  # the solution is invariant to the scale of G; tolerances become relative
    Q = U @ G  # rows: G u_b (G symmetric)
    if _clearly_definite(G):
        z, ok = _pivot(G, Q)
    else:  # (numerically) singular G (dependent gradients): pivoting is ill-posed
        eig, vec = np.linalg.eigh(G)
        z, ok = _least_squares(eig, vec, U)
    V = U + z
    # Projected-gradient KKT residual of every row (see _qp.kkt_residual), vectorised.
    residual = np.abs(V - np.maximum(V - V @ G, U)).max(axis=1)
    tol = _KKT_TOL * np.maximum(np.abs(U).max(axis=1), 1e-300)
    for b in np.flatnonzero(~ok | ~(residual <= tol)):
        V[b] = solve_qp(G, lower=U[b], start=V[b] if ok[b] else None).x
    # Remove rounding below the bounds; zero columns of G leave their z at 0.
    return np.maximum(V, U) if n else V


def _clearly_definite(G: Array) -> bool:
    """``lambda_min(G) > _MIN_EIG * trace(G)`` (so above ``_MIN_EIG * lambda_max``), decided by
    one Cholesky factorisation of the shifted matrix instead of an eigendecomposition."""
    shifted = G - (_MIN_EIG * float(np.trace(G))) * np.eye(G.shape[0])
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return False
    return True


def _least_squares(eig: Array, vec: Array, U: Array) -> tuple[Array, NDArray[np.bool_]]:
    """Each row as an NNLS problem on the factor ``L^T`` of ``G`` (module docstring)."""
    positive = eig > 0
    lt = np.sqrt(eig[positive])[:, None] * vec[:, positive].T  # L^T, G = L L^T
    z = np.zeros_like(U)
    ok = np.ones(U.shape[0], dtype=bool)
    for b in range(U.shape[0]):
        try:
            z[b] = nnls(lt, -(lt @ U[b]), maxiter=3 * U.shape[1] + 10)[0]
        except RuntimeError:  # iteration limit: the QP solver below takes the row over
            ok[b] = False
    return z, ok


def _free_block_solve(
    G: Array, Q: Array, F: NDArray[np.bool_], eye: NDArray[np.bool_]
) -> tuple[Array, NDArray[np.bool_]]:
    """Per row, ``z`` with ``G_FF z_F = -Q_F`` and ``z = 0`` off ``F``; and which were singular.

    Rows with an empty ``F`` (no bound to lift: often most of them) need no solve at all; the
    others are one batched Cholesky solve of ``G_FF`` masked into identity elsewhere.
    """
    rows, n = Q.shape
    zs = np.zeros((rows, n))
    singular = np.zeros(rows, dtype=bool)
    some = np.flatnonzero(F.any(axis=1))
    if some.size:
        Fs = F[some]
        A = np.where(Fs[:, :, None] & Fs[:, None, :], G, 0.0) + (eye & ~Fs[:, :, None])
        rhs = np.where(Fs, -Q[some], 0.0)
        # G_FF is positive definite here (G is, see dual_cone_solve): Cholesky, not LU.
        factor, info = torch.linalg.cholesky_ex(torch.from_numpy(A))
        sol = torch.cholesky_solve(torch.from_numpy(rhs)[..., None], factor)
        zs[some] = sol[..., 0].numpy()
        singular[some] = info.numpy() != 0
    return zs, singular


def _pivot(G: Array, Q: Array) -> tuple[Array, NDArray[np.bool_]]:
    """Block principal pivoting on all rows; returns ``z`` and which rows converged."""
    rows, n = Q.shape
    tol = 1e-13 * np.maximum(np.abs(Q).max(axis=1, keepdims=True), 1e-300)
    free = Q + tol < 0  # first guess: the coordinates whose bound is violated at z = 0
    z = np.zeros((rows, n))
    done = np.zeros(rows, dtype=bool)
    ok = np.ones(rows, dtype=bool)
    best = np.full(rows, n + 1)
    backup = np.full(rows, _BACKUP_ROUNDS)
    eye = np.eye(n, dtype=bool)
    for _ in range(3 * n + 10):
        active = ~done
        if not active.any():
            break
        F = free[active]
        zs, singular = _free_block_solve(G, Q[active], F, eye)
        w = Q[active] + zs @ G
        t = tol[active]
        bad = (F & (zs < -t)) | (~F & (w < -t))
        count = bad.sum(axis=1)
        idx = np.flatnonzero(active)
        z[idx] = np.where(F, zs, 0.0)
        finished = (count == 0) | singular | ~np.isfinite(zs).all(axis=1)
        ok[idx[singular]] = False
        done[idx[finished]] = True
        # Swap rules, per row: all violations while progress is made (or backups remain),
        # otherwise only the violation of largest index.
        improved = count < best[idx]
        use_backup = ~improved & (backup[idx] > 0)
        best[idx] = np.where(improved, count, best[idx])
        backup[idx] = np.where(improved, _BACKUP_ROUNDS, backup[idx] - use_backup)
        last = n - 1 - np.argmax(bad[:, ::-1], axis=1)
        single = np.zeros_like(bad)
        single[np.arange(len(idx)), last] = True
        swap = np.where((improved | use_backup)[:, None], bad, bad & single)
        swap &= ~finished[:, None]
        free[idx] = F ^ swap
    ok &= done
    return z, ok
