"""MoDo and SDMGrad: their definitions (one projected step; the inner momentum loop) and
agreement with torchjd's MoDoWeighting / SDMGradWeighting, both deterministic given the matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import MoDo, SDMGrad
from manytask.balancers._qp import simplex_projection

NAMES = ("a", "b", "c", "d")


def _setup(balancer: MoDo | SDMGrad, names: tuple[str, ...] = NAMES) -> MoDo | SDMGrad:
    balancer.setup(names)
    return balancer


def _simplex_by_bisection(y: np.ndarray, total: float = 1.0) -> np.ndarray:
    """Projection on the simplex from its definition: x = max(y - nu, 0), sum x = total."""
    lo, hi = float(y.min()) - total, float(y.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(y - mid, 0).sum() > total else (lo, mid)
    return np.maximum(y - 0.5 * (lo + hi), 0)


@pytest.mark.parametrize("seed", range(4))
def test_simplex_projection_matches_its_definition(seed: int) -> None:
    y = np.random.default_rng(seed).normal(size=7) * 3
    assert np.allclose(simplex_projection(y, 0.7), _simplex_by_bisection(y, 0.7), atol=1e-12)


def test_modo_takes_one_projected_step_per_call() -> None:
    J = random_jacobian(4, 9, seed=1)
    G = J @ J.T
    modo = _setup(MoDo(gamma=0.05, rho=0.2))
    lam = np.full(4, 0.25)
    for _ in range(3):
        lam = _simplex_by_bisection(lam - 0.05 * (G.numpy() @ lam + 0.2 * lam))
        w = modo.decide(torch.ones(4), NAMES, G).weights
        assert np.allclose(w.numpy(), lam, atol=1e-12)
        assert abs(float(w.sum()) - 1) < 1e-12


def test_sdmgrad_inner_loop_and_direction() -> None:
    J = random_jacobian(4, 9, seed=2)
    A = (J @ J.T).numpy()
    sdm = _setup(SDMGrad(lamda=0.3, lr=5.0, momentum=0.5, n_iter=7))
    An = A / (np.mean(np.sqrt(np.diag(A))) ** 2 + 1e-8)
    w, v = np.full(4, 0.25), np.zeros(4)
    for i in range(7):
        g = An @ (w + 0.3 * 0.25)
        v = g if i == 0 else 0.5 * v + g
        w = _simplex_by_bisection(w - 5.0 * v)
    out = sdm.decide(torch.ones(4), NAMES, torch.from_numpy(A)).weights
    assert np.allclose(out.numpy(), (w + 0.3 / 4) / 1.3, atol=1e-10)


def test_a_cross_gramian_is_used_as_given() -> None:
    # Double sampling: A = J1 J2^T is not symmetric; it must not be symmetrised or made PSD.
    J1, J2 = random_jacobian(3, 6, seed=3), random_jacobian(3, 6, seed=4)
    A = J1 @ J2.T
    lam = np.full(3, 1 / 3)
    expected = _simplex_by_bisection(lam - 0.1 * (A.numpy() @ lam + 0.1 * lam))
    got = _setup(MoDo(), ("x", "y", "z")).decide(torch.ones(3), ("x", "y", "z"), A).weights
    assert np.allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("cross", [False, True])
def test_agree_with_torchjd_over_steps(cross: bool) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours_m, ours_s = _setup(MoDo(gamma=0.1, rho=0.1)), _setup(SDMGrad())
    theirs_m = aggregation.MoDoWeighting(gamma=0.1, rho=0.1)
    theirs_s = aggregation.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3)
    for step in range(4):
        J1 = random_jacobian(4, 12, seed=10 + step)
        J2 = random_jacobian(4, 12, seed=20 + step) if cross else J1
        A = J1 @ J2.T
        for ours, theirs in ((ours_m, theirs_m), (ours_s, theirs_s)):
            w = ours.decide(torch.ones(4), NAMES, A).weights
            assert torch.allclose(w, theirs(A), atol=1e-9), (type(ours).__name__, step)


def test_absent_task_keeps_its_weight_and_the_share_sums_to_one() -> None:
    J = random_jacobian(3, 8, seed=5)
    for method in (MoDo(gamma=0.3), SDMGrad()):
        bal = _setup(method)
        state = next(iter(bal.state_dict().values())).clone()
        w = bal.decide(torch.ones(3), ("a", "c", "d"), J @ J.T).weights
        after = next(iter(bal.state_dict().values()))
        assert after[1] == state[1]  # task b was absent
        assert abs(float(after.sum()) - 1) < 1e-12  # the present share kept its mass
        assert abs(float(w.sum()) - 1) < 1e-12


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="'modo': gamma"):
        MoDo(gamma=0.0)
    with pytest.raises(ValueError, match="'sdmgrad': momentum"):
        SDMGrad(momentum=1.0)
    with pytest.raises(ValueError, match="'sdmgrad': n_iter"):
        SDMGrad(n_iter=0)
