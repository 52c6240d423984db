"""CAGrad: the mean at c=0, dual optimality, the primal property, rescaling, torchjd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bal_helpers import random_jacobian
from scipy.optimize import minimize

from manytask.balancers import CAGrad
from manytask.balancers.cagrad import cagrad_dual, cagrad_weights


def _decide(G: torch.Tensor, **kw: float) -> torch.Tensor:
    names = [f"t{i}" for i in range(G.shape[0])]
    m = CAGrad(**kw)  # type: ignore[arg-type]
    m.setup(names)
    return m.decide(torch.ones(len(names)), names, G).weights


def _dual_objective(G: np.ndarray, c: float, w: np.ndarray) -> float:
    k = G.shape[0]
    phi = c * math.sqrt(G.sum()) / k
    return float(G.sum(1) @ w / k + phi * math.sqrt(max(w @ G @ w, 0.0)))


@pytest.mark.parametrize("k", [2, 3, 7])
def test_c_zero_is_exactly_the_mean(k: int) -> None:
    J = random_jacobian(k, 5, seed=k)
    for rescale in (0, 1, 2):
        assert torch.equal(
            _decide(J @ J.T, c=0.0, rescale=rescale), torch.full((k,), 1.0 / k, dtype=torch.float64)
        )


def test_dual_minimum_matches_brute_force_two_tasks() -> None:
    for seed in range(4):
        J = random_jacobian(2, 6, seed=seed).numpy()
        G = J @ J.T
        G = G / np.trace(G)
        w, _ = cagrad_dual(G, 0.5)
        grid = np.linspace(0, 1, 200_001)
        values = [_dual_objective(G, 0.5, np.array([a, 1 - a])) for a in grid[::100]]
        coarse = grid[::100][int(np.argmin(values))]
        fine = grid[(grid > coarse - 1e-3) & (grid < coarse + 1e-3)]
        best = min(_dual_objective(G, 0.5, np.array([a, 1 - a])) for a in fine)
        assert _dual_objective(G, 0.5, w) <= best + 1e-12


@pytest.mark.parametrize(("k", "c"), [(3, 0.4), (5, 0.4), (5, 1.5)])
def test_dual_beats_scipy(k: int, c: float) -> None:
    J = random_jacobian(k, 9, seed=k).numpy()
    G = J @ J.T
    G = G / np.trace(G)
    w, _ = cagrad_dual(G, c)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    ref = minimize(
        lambda v: _dual_objective(G, c, v),
        np.full(k, 1 / k),
        method="SLSQP",
        bounds=[(0, 1)] * k,
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert _dual_objective(G, c, w) <= ref.fun + 1e-10


@pytest.mark.parametrize("k", [2, 4])
def test_primal_property(k: int) -> None:
    # d maximises min_i g_i . d over the ball ||d - g0|| <= c ||g0|| (rescale=0).
    c = 0.6
    J = random_jacobian(k, 5, seed=20 + k)
    d = _decide(J @ J.T, c=c, rescale=0) @ J
    g0 = J.mean(0)
    radius = c * float(g0.norm())
    assert abs(float((d - g0).norm()) - radius) < 1e-9 * radius
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(20_000, 5, generator=gen, dtype=torch.float64)
    u = (
        u
        / u.norm(dim=1, keepdim=True)
        * radius
        * torch.rand(20_000, 1, generator=gen, dtype=torch.float64)
    )
    others = ((g0 + u) @ J.T).min(dim=1).values
    assert float((J @ d).min()) >= float(others.max()) - 1e-9


def test_rescale_factors() -> None:
    J = random_jacobian(3, 4, seed=2)
    base = _decide(J @ J.T, c=0.5, rescale=0)
    assert torch.allclose(_decide(J @ J.T, c=0.5, rescale=1), base / 1.25)
    assert torch.allclose(_decide(J @ J.T, c=0.5, rescale=2), base / 1.5)


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_vanishing_combination_gives_the_optimum_nearest_the_mean(c: float) -> None:
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    w = _decide(J @ J.T, c=c, rescale=0)
    # g1 + g2 = 0, so min_k g_k . d <= 0 for every d: the optimal value is 0 and the optima are
    # the points of the ball with J d >= 0. Expect the one nearest g0: its KKT conditions as a
    # projection onto {J d >= 0} are d = g0 + J^T mu, mu >= 0, mu_k (J d)_k = 0.
    d, g0 = w @ J, J.mean(dim=0)
    mu = w - 1 / 3
    assert float((J @ d).min()) >= -1e-12
    assert float(mu.min()) >= -1e-12
    assert float((mu * (J @ d)).abs().max()) <= 1e-12
    assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e-12


def test_vanishing_combination_issue_example() -> None:
    # Issue 13: J = [[1, 0], [-1, 0], [2, 1]], c = 1. The optima are d = (0, t), 0 <= t <= 2/3;
    # the nearest to g0 = (2/3, 1/3) is (0, 1/3), so J d = (0, 0, 1/3) (by hand).
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    d = _decide(J @ J.T, c=1.0, rescale=0) @ J
    assert torch.allclose(J @ d, torch.tensor([0.0, 0.0, 1 / 3], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_agrees_with_torchjd(k: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(2):
        J = random_jacobian(k, 12, seed=seed)
        ours = _decide(J @ J.T, c=0.4, rescale=1) @ J
        theirs = aggregation.CAGrad(c=0.4)(J)
        # torchjd is rescale=0: ours divided by (1 + c^2). Clarabel's tolerance leaves ~1e-4.
        assert torch.allclose(
            ours * (1 + 0.4**2), theirs, rtol=5e-4, atol=5e-4 * float(theirs.norm())
        )
        # Where the two differ, our dual objective is the lower one.
        G = (J @ J.T).numpy()
        G = G / np.trace(G)
        theirs_w = aggregation.CAGradWeighting(c=0.4)(torch.from_numpy(G)).numpy()
        ours_w = _decide(torch.from_numpy(G), c=0.4, rescale=0).numpy()
        to_dual = lambda w: (w - 1 / k) / np.sum(w - 1 / k)  # noqa: E731 - recover w* on the simplex
        assert (
            _dual_objective(G, 0.4, to_dual(ours_w))
            <= _dual_objective(G, 0.4, to_dual(theirs_w)) + 1e-12
        )


def test_opposite_gradients_give_the_mean_without_failing() -> None:
    # g1 = -g2 up to rounding: ||g0|| ~ 0, the radius vanishes, the update is the mean gradient
    for eps in (0.0, 1e-13, 1e-9):
        g = torch.tensor([[1.0, 2.0], [-1.0, -2.0 + eps]], dtype=torch.float64)
        w = cagrad_weights(g @ g.T, 0.4, rescale=0)
        assert torch.isfinite(w).all()
        if eps == 0.0:
            torch.testing.assert_close(w, torch.full((2,), 0.5, dtype=torch.float64))


def test_near_opposite_gradients_from_the_toy_problem() -> None:
    # met on the toy problem's Pareto front: g1 = -g2 up to 1e-14
    g = torch.tensor(
        [[0.5000000000000193, -0.5], [-0.5, 0.49999999999998074]], dtype=torch.float64
    )
    w = cagrad_weights(g, 0.4, rescale=0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.full((2,), 0.5, dtype=torch.float64))
