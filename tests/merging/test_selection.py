"""Thresholds by selection equal the exact kthvalue result, whatever the chunking."""

from __future__ import annotations

import pytest
import torch

from manytask.merging.selection import OrderStatistics, select


def kth_smallest(x: torch.Tensor, rank: int, *, chunks: int = 1, seed: int = 0) -> float:
    """The chunked path end to end: sample, bracket, count until resolved."""
    parts = list(torch.chunk(x.reshape(-1), chunks))
    stats = OrderStatistics(x.numel(), [rank])
    gen = torch.Generator().manual_seed(seed)
    if stats.needs_sample:
        stats.add_sample(x, gen)
        stats.bracket()
    while True:
        for p in parts:
            stats.count(p)
        if stats.resolve():
            return stats.values[0]


@pytest.mark.parametrize("n", [1, 7, 5000, 300_000])
@pytest.mark.parametrize("chunks", [1, 3])
def test_matches_kthvalue(n: int, chunks: int) -> None:
    x = torch.randn(n)
    for rank in {0, n // 3, n // 2, (4 * n) // 5, n - 1}:
        expected = torch.kthvalue(x, rank + 1).values.item()
        assert kth_smallest(x, rank, chunks=chunks) == expected


def test_ties_and_zeros() -> None:
    # Mostly exact zeros (an unchanged layer) and repeated values: degenerate brackets.
    x = torch.zeros(400_000)
    x[:1000] = torch.randint(1, 4, (1000,)).float()
    for rank in [0, 200_000, 398_999, 399_000, 399_500, 399_999]:
        assert kth_smallest(x, rank, chunks=4) == torch.kthvalue(x, rank + 1).values.item()


def test_bracket_misses_are_recovered() -> None:
    # Brackets that miss (here forced to a narrow wrong range) are re-opened on the side they
    # missed, and the answer is still exact.
    x = torch.randn(100_000) ** 3
    ranks = [*range(0, 100_000, 9973), 99_999]
    stats = OrderStatistics(x.numel(), ranks, sample_size=1000)
    gen = torch.Generator().manual_seed(1)
    parts = torch.chunk(x, 5)
    stats.add_sample(x, gen)
    stats.bracket()
    for r in stats._ranks:
        r.lo, r.hi = 0.5, 0.6
    passes = 0
    while True:
        passes += 1
        for p in parts:
            stats.count(p)
        if stats.resolve():
            break
    assert passes == 2
    expected = [torch.kthvalue(x, r + 1).values.item() for r in ranks]
    assert stats.values == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_in_memory(dtype: torch.dtype) -> None:
    x = torch.randn(100_001, dtype=dtype).pow(3)
    x[:500] = 0.25  # ties
    before = x.clone()
    ranks = [99_999, 0, 50_000, 50_000, 7, 100_000]
    expected = [torch.kthvalue(x, r + 1).values.item() for r in ranks]
    assert select(x, ranks) == expected
    assert torch.equal(x, before)  # the input is left as it was
    a = x.abs()
    assert select(a, ranks, nonnegative=True) == [
        torch.kthvalue(a, r + 1).values.item() for r in ranks
    ]
    scratch = x.clone()
    assert select(scratch, ranks, overwrite=True) == expected  # may reorder scratch
    assert sorted(scratch.tolist()) == sorted(x.tolist())
    with pytest.raises(ValueError, match="rank 100001 out of range"):
        select(x, [100_001])


def test_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank 10 out of range"):
        OrderStatistics(10, [10])
