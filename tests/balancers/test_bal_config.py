"""ConFIG: equal cosines with every task, the projection length, explicit form, torchjd."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import ConFIG


def _decide(G: torch.Tensor) -> torch.Tensor:
    names = [f"t{i}" for i in range(G.shape[0])]
    m = ConFIG()
    m.setup(names)
    return m.decide(torch.ones(len(names)), names, G).weights


def _explicit(J: torch.Tensor) -> torch.Tensor:
    """Eq. 2 on explicit vectors: pseudo-inverse of the unit-gradient matrix."""
    units = J / J.norm(dim=1, keepdim=True)
    gv = torch.linalg.pinv(units) @ torch.ones(J.shape[0], dtype=J.dtype)
    e = gv / gv.norm()
    return (J @ e).sum() * e


@pytest.mark.parametrize(("k", "rank"), [(2, None), (4, None), (6, 3)])
def test_equals_explicit_form(k: int, rank: int | None) -> None:
    J = random_jacobian(k, 8, rank=rank, seed=k)
    assert torch.allclose(_decide(J @ J.T) @ J, _explicit(J), atol=1e-10)


def test_equal_positive_cosines_and_projection_length() -> None:
    J = random_jacobian(4, 9, seed=1) * torch.tensor(
        [[1.0], [5.0], [0.2], [2.0]], dtype=torch.float64
    )
    d = _decide(J @ J.T) @ J
    cosines = J @ d / (J.norm(dim=1) * d.norm())
    assert torch.all(cosines > 0)
    assert torch.allclose(cosines, cosines[0].expand(4), rtol=1e-10)
    e = d / d.norm()
    assert torch.allclose(d.norm(), (J @ e).sum())


def test_zero_gradient_and_all_zero() -> None:
    J = random_jacobian(3, 5, seed=2)
    J[2] = 0
    w = _decide(J @ J.T)
    assert float(w[2]) == 0.0
    assert torch.allclose(w @ J, _explicit(J[:2]), atol=1e-10)
    assert torch.equal(
        _decide(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)
    )


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("rank", [None, 2])
def test_agrees_with_torchjd(k: int, rank: int | None) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(k, 12, rank=rank, seed=k)
    assert torch.allclose(_decide(J @ J.T) @ J, aggregation.ConFIG()(J), rtol=1e-8, atol=1e-10)
