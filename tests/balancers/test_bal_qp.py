"""The small QP solver: feasibility, KKT optimality, and agreement with independent solvers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from manytask.balancers import _qp
from manytask.balancers._qp import _fista, _project, kkt_residual, solve_qp


def _gramians(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        k = int(rng.integers(2, 11))
        p = int(rng.integers(1, 12))  # p < k gives rank-deficient Gramians
        J = rng.normal(size=(k, p)) * 10.0 ** rng.integers(-3, 4)
        if i % 3 == 0:
            J[1] = 2.0 * J[0]  # exactly dependent rows
        out.append(J @ J.T)
    return out


def _slsqp_simplex(G: np.ndarray) -> np.ndarray:
    k = G.shape[0]
    res = minimize(
        lambda w: w @ G @ w,
        np.full(k, 1.0 / k),
        jac=lambda w: 2 * G @ w,
        bounds=[(0.0, None)] * k,
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    return np.asarray(res.x)


@pytest.mark.parametrize("G", _gramians(40))
def test_simplex_qp_is_optimal(G: np.ndarray) -> None:
    res = solve_qp(G, lower=0.0, total=1.0)
    x = res.x
    assert np.all(np.isfinite(x)) and x.min() >= 0 and abs(x.sum() - 1) < 1e-12
    scale = np.max(np.diag(G))
    assert kkt_residual(G / scale, None, x, lower=0.0, total=1.0) < 1e-9
    # KKT of min x^T G x on the simplex: (Gx)_i >= x^T G x for all i, with equality where x_i > 0.
    grad, value = G @ x, x @ G @ x
    assert np.all(grad >= value - 1e-9 * scale)
    assert np.all(np.abs(grad[x > 1e-9] - value) < 1e-8 * scale)
    # No independent solver and no random feasible point does better.
    ref = _slsqp_simplex(G)
    ref = np.maximum(ref, 0) / np.maximum(ref, 0).sum()
    assert value <= ref @ G @ ref + 1e-12 * scale
    rng = np.random.default_rng(1)
    points = rng.dirichlet(np.ones(G.shape[0]), size=200)
    assert value <= np.min(np.einsum("ni,ij,nj->n", points, G, points)) + 1e-12 * scale


def test_box_qp_closed_form() -> None:
    # Q = diag(q) > 0 separates: x_i = max(-c_i / q_i, lower_i).
    rng = np.random.default_rng(2)
    q, c, lo = rng.random(6) + 0.1, rng.normal(size=6), rng.normal(size=6)
    res = solve_qp(np.diag(q), c, lower=lo)
    np.testing.assert_allclose(res.x, np.maximum(-c / q, lo), atol=1e-12)


def test_free_variables_and_equality() -> None:
    # min 1/2 |x|^2 s.t. sum x = 3 with no bounds: x = (1, 1, 1).
    res = solve_qp(np.eye(3), lower=None, total=3.0)
    np.testing.assert_allclose(res.x, np.ones(3), atol=1e-12)


def test_singular_dual_cone_problem() -> None:
    # min v^T G v s.t. v >= u with G singular (rank 2 of 5): the UPGrad / DualProj problem.
    rng = np.random.default_rng(3)
    J = rng.normal(size=(5, 2))
    G, u = J @ J.T, rng.random(5)
    res = solve_qp(G, lower=u)
    assert np.all(res.x >= u - 1e-12)
    assert kkt_residual(G / np.max(np.diag(G)), None, res.x, lower=u) < 1e-9
    ref = minimize(
        lambda v: v @ G @ v,
        u + 1.0,
        jac=lambda v: 2 * G @ v,
        bounds=[(b, None) for b in u],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    assert res.x @ G @ res.x <= ref.fun + 1e-9


def test_fallback_reaches_the_same_optimum() -> None:
    G = _gramians(5)[1]
    G = G / np.max(np.diag(G))
    lo = np.zeros(G.shape[0])
    x, _ = _fista(G, np.zeros(G.shape[0]), lo, 1.0, np.full(G.shape[0], 1.0 / G.shape[0]))
    exact = solve_qp(G, lower=0.0, total=1.0).x
    assert abs(x @ G @ x - exact @ G @ exact) < 1e-9


def test_solver_falls_back_when_active_set_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    G = _gramians(5)[2]
    exact = solve_qp(G, lower=0.0, total=1.0)
    monkeypatch.setattr(_qp, "_active_set", lambda Q, c, lo, total, x0: (x0, 0, False))
    res = solve_qp(G, lower=0.0, total=1.0)
    assert res.method == "projected-gradient"
    assert abs(res.x @ G @ res.x - exact.x @ G @ exact.x) < 1e-9 * np.max(np.diag(G))


def test_projection_on_shifted_simplex() -> None:
    rng = np.random.default_rng(4)
    y, lo = rng.normal(size=7), rng.normal(size=7) - 1
    x = _project(y, lo, 2.0)
    assert np.all(x >= lo - 1e-12) and abs(x.sum() - 2.0) < 1e-12
    # Projection optimality: (y - x) . (z - x) <= 0 for feasible z.
    for _ in range(50):
        z = lo + rng.dirichlet(np.ones(7)) * (2.0 - lo.sum())
        assert (y - x) @ (z - x) <= 1e-10


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        solve_qp(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        solve_qp(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="infeasible"):
        solve_qp(np.eye(2), lower=1.0, total=1.0)
    with pytest.raises(ValueError, match="unbounded"):
        solve_qp(np.zeros((2, 2)), np.array([-1.0, 0.0]), lower=0.0)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 7),
    p=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    with_total=st.booleans(),
    free=st.integers(0, 7),
)
def test_random_problems_reach_kkt(k: int, p: int, seed: int, with_total: bool, free: int) -> None:
    # Mixed bounded/free variables, with or without the sum constraint. Q stays singular where
    # the feasible set is bounded (all variables bounded, sum fixed); elsewhere a ridge keeps
    # the problem bounded below (a singular Q may make it unbounded, which raises instead).
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(k, p))
    n_free = min(free, k - 1)
    ridge = 0.0 if with_total and n_free == 0 else 0.1
    Q = J @ J.T + ridge * np.eye(k)
    c = rng.normal(size=k)
    lo = rng.normal(size=k)
    lo[:n_free] = -np.inf
    total = float(np.sum(np.where(np.isfinite(lo), lo, 0.0)) + 1.0) if with_total else None
    res = solve_qp(Q, c, lower=lo, total=total)
    assert np.all(np.isfinite(res.x)) and np.all(res.x >= lo - 1e-12)
    if total is not None:
        assert abs(res.x.sum() - total) < 1e-9 * max(1.0, abs(total))
    scale = np.max(np.diag(Q))
    assert kkt_residual(Q / scale, c / scale, res.x, lower=lo, total=total) < 1e-8
