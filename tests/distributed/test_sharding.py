"""Pieces of distributed training that need no second process."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask.balancers import make_balancer
from manytask.data import TensorBatches
from manytask.training.distributed import ShardedBatches, context, is_main_process


def _batches() -> TensorBatches:
    x = {"img": torch.arange(30.0).reshape(10, 3), "len": torch.arange(10)}
    targets = {"a": torch.arange(10) % 3, "b": torch.linspace(0, 1, 10)[:, None]}
    return TensorBatches(x, targets, 4, shuffle=True, seed=7)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_put_together_are_the_global_batches(world: int) -> None:
    glob = _batches()
    shards = [ShardedBatches(_batches(), r, world) for r in range(world)]
    for epoch in (0, 3):
        glob.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        parts = list(zip(*shards, strict=True))
        whole = list(glob)
        assert len(parts) == len(whole) == len(shards[0]) == 3
        for (x, t), pieces in zip(whole, parts, strict=True):
            for key in x:
                assert torch.equal(torch.cat([p[0][key] for p in pieces]), x[key])
            for key in t:
                assert torch.equal(torch.cat([p[1][key] for p in pieces]), t[key])
            sizes = [p[0]["img"].shape[0] for p in pieces]
            assert max(sizes) - min(sizes) <= 1  # as even as the batch allows


def test_set_epoch_changes_the_order_of_every_shard() -> None:
    s = ShardedBatches(_batches(), 0, 2)
    s.set_epoch(0)
    first = next(iter(s))[0]["img"]
    s.set_epoch(1)
    assert not torch.equal(next(iter(s))[0]["img"], first)


@pytest.mark.parametrize(
    ("rank", "world", "message"),
    [(2, 2, "rank must be in"), (-1, 2, "rank must be in"), (0, 0, "world_size must be")],
)
def test_bad_rank_or_world(rank: int, world: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardedBatches(_batches(), rank, world)


def test_unsplittable_batch_element() -> None:
    s = ShardedBatches([("text", {"a": torch.zeros(2)})], 0, 2)
    with pytest.raises(TypeError, match="cannot split a batch element of type str"):
        next(iter(s))


def test_one_process_is_not_distributed() -> None:
    assert context() is None
    assert is_main_process()


def test_process_group_without_distributed_is_refused() -> None:
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"torch\.distributed is not initialised"):
        manytask.backward({"a": w.sum()}, make_balancer("equal"), process_group=object())
