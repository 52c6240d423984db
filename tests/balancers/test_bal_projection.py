"""UPGrad and DualProj: dual-cone projections, checked in parameter space and vs torchjd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bal_helpers import random_jacobian
from scipy.optimize import minimize

from manytask.balancers import DualProj, UPGrad


def _decide(method: type[UPGrad] | type[DualProj], G: torch.Tensor) -> torch.Tensor:
    names = [f"t{i}" for i in range(G.shape[0])]
    m = method()
    m.setup(names)
    return m.decide(torch.ones(len(names)), names, G).weights


def _project_on_dual_cone(J: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Explicit projection of x onto {y : J y >= 0}, solved in parameter space by SLSQP."""
    res = minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2),
        x,
        jac=lambda y: y - x,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda y: J @ y, "jac": lambda y: J}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return np.asarray(res.x)


@pytest.mark.parametrize(("k", "rank"), [(3, None), (4, None), (5, 3)])
def test_upgrad_is_the_mean_of_explicit_projections(k: int, rank: int | None) -> None:
    J = random_jacobian(k, 6, rank=rank, seed=k)
    expected = np.mean([_project_on_dual_cone(J.numpy(), J[i].numpy()) for i in range(k)], axis=0)
    got = (_decide(UPGrad, J @ J.T) @ J).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize(("k", "rank"), [(3, None), (5, 3)])
def test_dualproj_is_the_explicit_projection_of_the_mean(k: int, rank: int | None) -> None:
    J = random_jacobian(k, 6, rank=rank, seed=10 + k)
    expected = _project_on_dual_cone(J.numpy(), J.mean(0).numpy())
    got = (_decide(DualProj, J @ J.T) @ J).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("method", [UPGrad, DualProj])
def test_update_conflicts_with_no_task(method: type[UPGrad] | type[DualProj]) -> None:
    for seed in range(5):
        J = random_jacobian(6, 4, seed=seed)  # 6 gradients in 4 dimensions: conflicts abound
        d = _decide(method, J @ J.T) @ J
        assert float((J @ d).min()) >= -1e-9 * float(J.norm() ** 2)


@pytest.mark.parametrize("method", [UPGrad, DualProj])
def test_no_conflict_gives_the_mean(method: type[UPGrad] | type[DualProj]) -> None:
    J = torch.rand(4, 5, dtype=torch.float64)  # non-negative: every g_i . g_j >= 0
    assert torch.allclose(
        _decide(method, J @ J.T), torch.full((4,), 0.25, dtype=torch.float64), atol=1e-15
    )


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_agree_with_torchjd(k: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    linalg = pytest.importorskip("torchjd.linalg")
    pytest.importorskip("quadprog")
    J = random_jacobian(k, 12, seed=k)
    exact = linalg.QuadprogProjector(reg_eps=0.0, norm_eps=0.0)  # no ridge on the Gramian
    for ours_cls, theirs_cls in ((UPGrad, aggregation.UPGrad), (DualProj, aggregation.DualProj)):
        ours = _decide(ours_cls, J @ J.T) @ J
        assert torch.allclose(ours, theirs_cls(projector=exact)(J), rtol=1e-7, atol=1e-9)
        # torchjd's default projector adds 1e-4 to the diagonal of the normalised Gramian.
        assert torch.allclose(ours, theirs_cls()(J), rtol=5e-3, atol=5e-3 * float(ours.norm()))
