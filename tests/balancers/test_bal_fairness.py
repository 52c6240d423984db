"""Nash-MTL and FairGrad: the equation G w = w^(-1/alpha), closed forms, state, torchjd."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import FairGrad, NashMTL
from manytask.balancers._fairness import fair_weights


def _decide(
    method: NashMTL | FairGrad, G: torch.Tensor, tasks: list[str] | None = None
) -> torch.Tensor:
    names = tasks or [f"t{i}" for i in range(G.shape[0])]
    if not method.task_names:
        method.setup(names)
    return method.decide(torch.ones(len(names)), names, G).weights


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_weights_solve_the_equation(alpha: float, k: int) -> None:
    J = random_jacobian(k, 10, seed=k) * 10.0  # scale does not matter to the solver
    G = J @ J.T
    w = _decide(FairGrad(alpha=alpha), G)
    assert torch.all(w > 0)
    target = w ** (-1.0 / alpha)
    assert torch.allclose(G @ w, target, rtol=1e-8)


def test_orthogonal_gradients_closed_form() -> None:
    # G = diag(n^2): w_k = n_k^(-2 / (1 + 1/alpha)); Nash-MTL (alpha = 1) gives w_k = 1/||g_k||.
    norms = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    G = torch.diag(norms**2)
    # rtol: the documented 1e-10 ridge, relative to the smallest diagonal entry.
    assert torch.allclose(_decide(NashMTL(max_norm=0.0), G), 1 / norms, rtol=1e-7)
    alpha = 3.0
    expected = norms ** (-2.0 / (1.0 + 1.0 / alpha))
    assert torch.allclose(_decide(FairGrad(alpha=alpha), G), expected, rtol=1e-7)


def test_nash_update_norm_and_clipping() -> None:
    J = random_jacobian(4, 9, seed=1)
    G = J @ J.T
    d = _decide(NashMTL(max_norm=0.0), G) @ J
    assert abs(float(d @ d) - 4.0) < 1e-7  # alpha^T G alpha = sum_k alpha_k / alpha_k = K
    clipped = _decide(NashMTL(max_norm=1.0), G) @ J
    assert abs(float(clipped.norm()) - 1.0) < 1e-9
    assert torch.allclose(clipped, d / d.norm())
    assert torch.allclose(_decide(NashMTL(max_norm=0.0), G), _decide(FairGrad(alpha=1.0), G))


def test_nash_reuses_weights_between_updates() -> None:
    m = NashMTL(max_norm=0.0, update_weights_every=3)
    G1 = random_jacobian(3, 5, seed=1) @ random_jacobian(3, 5, seed=1).T
    G2 = 4.0 * G1
    w1 = _decide(m, G1)
    assert torch.equal(_decide(m, G2), w1)  # step 2: reused
    assert torch.equal(_decide(m, G2), w1)  # step 3: reused
    assert torch.allclose(_decide(m, G2), w1 / 2)  # step 4: recomputed, G scaled by 4
    # A change in the present tasks forces a recomputation, and leaves absent state alone.
    sub = G2[:2, :2]
    w_sub = _decide(m, sub, ["t0", "t1"])
    assert torch.allclose(w_sub, torch.from_numpy(fair_weights(sub.numpy(), 1.0)))
    assert float(m.last_alpha[2]) == 0.0


def test_no_solution_case_stays_finite() -> None:
    g = random_jacobian(1, 4, seed=2)[0]
    J = torch.stack([g, -g, random_jacobian(1, 4, seed=3)[0]])  # g1 + g2 = 0
    for method in (NashMTL(), FairGrad(alpha=2.0)):
        w = _decide(method, J @ J.T)
        assert torch.all(torch.isfinite(w)) and torch.all(w > 0)


def test_zero_gradient_gets_no_weight_and_alpha_zero_is_the_mean() -> None:
    J = random_jacobian(3, 4, seed=4)
    J[0] = 0
    w = _decide(FairGrad(alpha=1.0), J @ J.T)
    assert float(w[0]) == 0.0 and torch.all(w[1:] > 0)
    assert torch.equal(
        _decide(FairGrad(alpha=0.0), J @ J.T), torch.full((3,), 1 / 3, dtype=torch.float64)
    )


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_agree_with_torchjd(k: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(k, 12, seed=k)
    G = J @ J.T
    for alpha in (0.5, 2.0):
        ours = _decide(FairGrad(alpha=alpha), G) @ J
        assert torch.allclose(ours, aggregation.FairGrad(alpha=alpha)(J), rtol=1e-7)
    pytest.importorskip("cvxpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = aggregation.NashMTL(n_tasks=k, max_norm=0.0, optim_niter=100)(J)
    ours = _decide(NashMTL(max_norm=0.0), G) @ J
    # torchjd iterates convex programs and stops at ||G a - 1/a|| < 1e-3 (normalised G).
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(ours.norm()))
    w_theirs = torch.linalg.lstsq(J.T, theirs.unsqueeze(1)).solution.squeeze(1)
    w_ours = _decide(NashMTL(max_norm=0.0), G)
    residual = lambda w: float((G @ w - 1 / w).norm())  # noqa: E731
    assert residual(w_ours) <= residual(w_theirs) + 1e-12
    assert np.isfinite(residual(w_ours))


@pytest.mark.parametrize("p", [1.0, 0.5, 2.0])
def test_newton_stops_at_the_rounding_floor(p: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # Newton converges quadratically: a handful of steps reach float64's floor. Before the fix
    # the Armijo test could not see decreases below f's rounding and ran all 100 iterations
    # (each with up to 60 halvings) on 2-3 of these 40 inputs per p.
    import manytask.balancers._fairness as fairness

    solves = 0
    solve = np.linalg.solve

    def counting_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        nonlocal solves
        solves += 1
        return solve(a, b)

    monkeypatch.setattr(fairness.np.linalg, "solve", counting_solve)
    rng = np.random.default_rng(0)
    for _ in range(40):
        k = int(rng.integers(2, 60))
        J = rng.standard_normal((k, 300)) + rng.standard_normal((1, 300)) * rng.uniform(0, 3)
        G = J @ J.T * 10 ** rng.uniform(-8, 8)
        solves = 0
        w = fair_weights(G, p)
        assert solves <= 20
        # the 1e-10 ridge (relative to the mean diagonal) bounds the residual from below
        target = w ** (-p)
        assert np.linalg.norm(G @ w - target) <= 1e-8 * np.linalg.norm(target)
