"""Faster exact solvers of UPGrad/DualProj (batched pivoting) and CAGrad (closed forms):
they must agree with the former one-QP-at-a-time solvers to solver tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bal_helpers import random_jacobian

from manytask.balancers import _dual_cone
from manytask.balancers import cagrad as cg
from manytask.balancers._dual_cone import dual_cone_solve
from manytask.balancers._qp import solve_qp


@pytest.mark.parametrize(
    ("k", "p", "rank"), [(3, 8, None), (10, 30, None), (40, 64, None), (6, 20, 3), (12, 5, None)]
)
def test_batched_dual_cone_matches_one_qp_per_row(k: int, p: int, rank: int | None) -> None:
    J = random_jacobian(k, p, rank=rank, seed=k + p).numpy()
    G = J @ J.T
    U = np.vstack([np.eye(k) / k, np.full((1, k), 1.0 / k)])  # UPGrad rows and DualProj's
    V = dual_cone_solve(G, U)
    assert np.all(V >= U)
    for b in range(U.shape[0]):
        ref = solve_qp(G, lower=U[b]).x
        # The projection J^T v is unique even where v is not (dependent gradients).
        scale = max(float(np.linalg.norm(U[b] @ J)), 1e-12)
        assert np.linalg.norm(V[b] @ J - ref @ J) <= 1e-9 * scale
        # KKT: J (J^T v) >= 0 (the projection is in the dual cone).
        assert float((J @ (V[b] @ J)).min()) >= -1e-9 * float(np.abs(G).max())


@pytest.mark.parametrize("seed", range(5))
def test_the_pivoting_path_is_taken_exactly_for_clearly_definite_gramians(seed: int) -> None:
    # The Cholesky test must agree with the eigenvalues away from its threshold:
    # lambda_min / trace far above 1e-12 (full-rank gradients) or at rounding level (rank
    # deficient, more tasks than dimensions).
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((8, 20))
    deficient = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 20))
    for J, definite in ((full, True), (deficient, False)):
        G = J @ J.T
        lam = np.linalg.eigvalsh(G)
        assert (lam[0] > 1e-6 * lam.sum()) == definite  # the case is what it claims
        assert _dual_cone._clearly_definite(G) == definite


def test_dual_cone_all_zero_gradients_and_zero_task() -> None:
    assert np.array_equal(dual_cone_solve(np.zeros((3, 3)), np.eye(3)), np.eye(3))
    J = random_jacobian(3, 6, seed=1).numpy()
    J[1] = 0.0  # a task with no gradient: G has a zero row, the others are unaffected
    G = J @ J.T
    V = dual_cone_solve(G, np.eye(3) / 3)
    for b in range(3):
        ref = solve_qp(G, lower=np.eye(3)[b] / 3).x
        assert np.allclose(V[b] @ J, ref @ J, atol=1e-12)


def _dual(G: np.ndarray, c: float, w: np.ndarray) -> float:
    k = G.shape[0]
    phi = c * math.sqrt(G.sum()) / k
    return float(G.sum(1) @ w / k + phi * math.sqrt(max(w @ G @ w, 0.0)))


@pytest.mark.parametrize("seed", range(6))
def test_cagrad_two_task_closed_form_vs_root_search(seed: int) -> None:
    J = random_jacobian(2, 5, seed=seed).numpy()
    if seed == 5:
        J[1] = -0.5 * J[0]  # collinear, opposed: some convex combination vanishes
    G = J @ J.T / np.trace(J @ J.T)
    b = G.sum(1) / 2
    phi = 0.7 * math.sqrt(b.sum() / 2)
    closed = cg._two_tasks(G, b, phi)
    assert closed is not None
    w, norm = closed
    ref, _ = cg._by_bisection(G, b, phi)
    assert _dual(G, 0.7, w) <= _dual(G, 0.7, ref) + 1e-12
    assert abs(norm - math.sqrt(w @ G @ w)) < 1e-12


@pytest.mark.parametrize(("k", "c"), [(3, 0.4), (10, 0.4), (10, 2.0), (40, 0.4)])
def test_cagrad_active_set_vs_root_search(k: int, c: float) -> None:
    J = random_jacobian(k, 64, seed=k).numpy()
    G = J @ J.T / np.trace(J @ J.T)
    b = G.sum(1) / k
    phi = c * math.sqrt(b.sum() / k)
    ref, _ = cg._by_bisection(G, b, phi)
    # From the whole support (None allowed: a large support may have no closed form) and from
    # the best vertex (always has one): both end at the root search's optimum.
    for start, required in ((cg._uniform(k), False), (cg._best_vertex(G, b, phi), True)):
        found = cg._active_set(G, b, phi, start)
        if found is None:
            assert not required
            continue
        w, _ = found
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
        assert _dual(G, c, w) <= _dual(G, c, ref) + 1e-12


def test_cagrad_dependent_gradients_fall_back_exactly() -> None:
    J = random_jacobian(6, 9, rank=3, seed=4).numpy()
    G = J @ J.T / np.trace(J @ J.T)
    w, _ = cg.cagrad_dual(G, 0.5)
    b = G.sum(1) / 6
    ref, _ = cg._by_bisection(G, b, 0.5 * math.sqrt(b.sum() / 6))
    assert _dual(G, 0.5, w) <= _dual(G, 0.5, ref) + 1e-12


def test_cagrad_optimality_check_rejects_a_wrong_point() -> None:
    J = random_jacobian(4, 9, seed=8).numpy()
    G = J @ J.T / np.trace(J @ J.T)
    b = G.sum(1) / 4
    phi = 0.4 * math.sqrt(b.sum() / 4)
    w, _ = cg.cagrad_dual(G, 0.4)
    assert cg._is_optimal(G, b, phi, w)
    assert not cg._is_optimal(G, b, phi, np.full(4, 0.25)) or np.allclose(w, 0.25)
    assert not cg._is_optimal(G, b, phi, np.array([1.2, -0.2, 0.0, 0.0]))
