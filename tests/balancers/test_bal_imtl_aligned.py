"""IMTL-G and Aligned-MTL: their defining equations, explicit-vector forms, and torchjd."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import IMTLG, AlignedMTL
from manytask.balancers.aligned_mtl import balance_transformation


def _decide(method: IMTLG | AlignedMTL, G: torch.Tensor) -> torch.Tensor:
    names = [f"t{i}" for i in range(G.shape[0])]
    method.setup(names)
    return method.decide(torch.ones(len(names)), names, G).weights


def _paper_imtl_g(J: torch.Tensor) -> torch.Tensor:
    """Eq. 7 on explicit vectors: a_{2:K} = g_1 U^T (D U^T)^{-1}, a_1 = 1 - sum a_{2:K}."""
    u = J / J.norm(dim=1, keepdim=True)
    U = u[:1] - u[1:]
    D = J[:1] - J[1:]
    rest = J[0] @ U.T @ torch.linalg.inv(D @ U.T)
    return torch.cat([1 - rest.sum().reshape(1), rest])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_imtl_g_equals_the_papers_closed_form(k: int) -> None:
    J = random_jacobian(k, 8, seed=k)
    w = _decide(IMTLG(), J @ J.T)
    assert torch.allclose(w, _paper_imtl_g(J), atol=1e-10)
    assert abs(float(w.sum()) - 1) < 1e-12
    d = w @ J
    projections = J @ d / J.norm(dim=1)  # equal projections on every unit gradient
    assert torch.allclose(projections, projections[0].expand(k), rtol=1e-10)


def test_imtl_g_zero_gradient_gets_no_weight() -> None:
    J = random_jacobian(3, 5, seed=1)
    J[1] = 0.0
    w = _decide(IMTLG(), J @ J.T)
    assert float(w[1]) == 0.0 and torch.all(torch.isfinite(w))
    keep = torch.tensor([0, 2])
    assert torch.allclose(w[keep], _paper_imtl_g(J[keep]), atol=1e-10)


def test_aligned_rows_are_orthogonal_with_equal_norm() -> None:
    J = random_jacobian(4, 7, seed=2)
    G = J @ J.T
    B = torch.from_numpy(balance_transformation(G, "min"))
    aligned = B @ J
    lam_min = float(torch.linalg.eigvalsh(G).min())
    assert torch.allclose(
        aligned @ aligned.T, lam_min * torch.eye(4, dtype=torch.float64), atol=1e-10
    )


@pytest.mark.parametrize("rank", [None, 3])
def test_aligned_mtl_equals_the_svd_form(rank: int | None) -> None:
    # For J = U S V^T (rank r), B J = sigma_min U_r V_r^T; the update sums its rows.
    J = random_jacobian(5, 7, rank=rank, seed=3)
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    r = int((S.max() * 1e-10 < S).sum())
    expected = S[r - 1] * (U[:, :r] @ Vh[:r]).sum(0)
    assert torch.allclose(_decide(AlignedMTL(), J @ J.T) @ J, expected, atol=1e-10)
    # Other scales multiply the update by sqrt(lambda / lambda_min).
    lam = S[:r] ** 2
    for scale, value in (("median", lam.median()), ("mean", lam.mean())):
        assert r % 2 == 1  # an odd count: the median is a single eigenvalue
        got = _decide(AlignedMTL(scale=scale), J @ J.T) @ J
        assert torch.allclose(got, expected * (value / lam[-1]).sqrt(), atol=1e-10)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("rank", [None, 2])
def test_agree_with_torchjd(k: int, rank: int | None) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(k, 12, rank=rank, seed=k)
    G = J @ J.T
    assert torch.allclose(_decide(IMTLG(), G) @ J, aggregation.IMTLG()(J), rtol=1e-8, atol=1e-10)
    # torchjd's AlignedMTL uses task weights 1/K where we use 1.
    theirs = aggregation.AlignedMTL()(J) * k
    assert torch.allclose(_decide(AlignedMTL(), G) @ J, theirs, rtol=1e-8, atol=1e-10)
    theirs = aggregation.AlignedMTL(scale_mode="rmse")(J) * k
    assert torch.allclose(_decide(AlignedMTL(scale="mean"), G) @ J, theirs, rtol=1e-8, atol=1e-10)
