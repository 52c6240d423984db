"""The Gramian's two products and the certificate between them (manytask.engine.gramian)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import manytask
from manytask.engine.gramian import CHUNK, GAMMA, SMALL, certified, gramian_of

K, D = 6, 3 * CHUNK * 20  # K * D above SMALL: the float32 product is tried first


def _exact(J: Tensor) -> Tensor:
    d = J.double()
    return d @ d.T


def _cosine_error(got: Tensor, exact: Tensor) -> float:
    s = exact.diagonal().sqrt()
    return float(((got - exact) / (s[:, None] * s[None, :])).abs().max())


def _jacobian(rank: int | None = None, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(K, D, generator=gen)
    return torch.randn(K, rank, generator=gen) @ torch.randn(rank, D, generator=gen)


def test_sizes_take_the_float32_path() -> None:
    assert K * D > SMALL


def test_well_conditioned_float32_jacobian_is_within_the_bound() -> None:
    J = _jacobian()
    got = gramian_of([J[:, : D // 3], J[:, D // 3:]])  # two blocks, several chunks each
    exact = _exact(J)
    assert got.dtype == torch.float64 and torch.equal(got, got.T)
    assert _cosine_error(got, exact) <= GAMMA  # the certified bound (rigorous)
    assert _cosine_error(got, exact) < 1e-6  # and rounding as it occurs
    assert _cosine_error(got, exact) > 1e-12  # the float32 products were kept: they differ


def test_rank_deficient_float32_jacobian_gets_the_float64_product() -> None:
    J = _jacobian(rank=3)  # K = 6 tasks, rank 3
    fast = torch.zeros(K, K, dtype=torch.float64)
    for chunk in J.split(CHUNK, dim=1):
        fast += (chunk @ chunk.T).double()
    assert not certified(0.5 * (fast + fast.T))
    got = gramian_of([J])
    exact = _exact(J)
    assert torch.allclose(got, exact, rtol=1e-12, atol=0)
    cos = got / (got.diagonal().sqrt()[:, None] * got.diagonal().sqrt()[None, :])
    assert float(torch.linalg.eigvalsh(cos)[2]) < 1e-10  # rank 3 kept: 3 zero eigenvalues


@pytest.mark.parametrize("case", ["duplicate", "opposite", "zero row"])
def test_degenerate_rows_get_the_float64_product(case: str) -> None:
    J = _jacobian()
    J[1] = {"duplicate": J[0], "opposite": -J[0], "zero row": torch.zeros(D)}[case]
    assert torch.allclose(gramian_of([J]), _exact(J), rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", [1e19, 1e-20])
def test_overflow_and_underflow_of_float32_products(scale: float) -> None:
    J = _jacobian() * scale  # squares overflow (1e38 * D) or underflow float32
    got = gramian_of([J])
    assert bool(torch.isfinite(got).all())
    assert torch.allclose(got, _exact(J), rtol=1e-12, atol=0)


def test_certificate_on_small_matrices() -> None:
    eye = torch.eye(5, dtype=torch.float64)
    assert certified(eye * 3.0)
    assert not certified(torch.ones(5, 5, dtype=torch.float64))  # rank one
    assert not certified(eye * float("inf"))
    assert not certified(eye * 1e-31)  # squared norms below the underflow floor
    near = torch.full((5, 5), 0.999, dtype=torch.float64) + 0.001 * eye
    assert not certified(near)  # full rank, but lambda_min(C) = 0.001 < 4 K GAMMA


@pytest.mark.parametrize("name", ["imtl_g", "mgda", "upgrad", "aligned_mtl", "config"])
def test_weights_on_the_float32_product_match_the_float64_ones(name: str) -> None:
    J = _jacobian(seed=4)
    tasks = tuple(f"t{i}" for i in range(K))
    losses = torch.ones(K, dtype=torch.float64)
    ours = manytask.make_balancer(name, tasks=list(tasks)).decide(losses, tasks, gramian_of([J]))
    exact = manytask.make_balancer(name, tasks=list(tasks)).decide(losses, tasks, _exact(J))
    assert torch.allclose(ours.weights, exact.weights, rtol=1e-5, atol=1e-7)
