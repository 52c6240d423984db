"""Ranks whose shards label different tasks (``manytask.engine.uneven``): every rank runs the
same backward passes through the features and the shared part, whatever it holds, and gets
its own tasks' gradients with zero rows for the others."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from manytask.engine.collectives import DistContext
from manytask.engine.gather import TaskBatch
from manytask.engine.gradients import task_gradients
from manytask.engine.uneven import uneven_gradients

TASKS = ("a", "b", "c")
RANKS_OF_TWO = DistContext(rank=0, world_size=2)


def setup() -> tuple[nn.Module, list[Tensor], dict[str, Tensor]]:
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    heads = {t: nn.Linear(4, 1) for t in TASKS}
    z = shared(torch.randn(7, 5))
    losses = {t: (heads[t](z) - i).pow(2).mean() for i, t in enumerate(TASKS)}
    return shared, [z], losses


def batch_of(losses: dict[str, Tensor], local: list[int]) -> TaskBatch:
    mine = [losses[TASKS[j]] for j in local]
    stacked = torch.stack([losses[t] for t in TASKS])
    return TaskBatch(TASKS, stacked, local, mine, RANKS_OF_TWO, uniform=False)


def passes_during(feats: list[Tensor], run: object) -> int:
    """Backward passes in which some feature tensor received a gradient."""
    count = [0]

    def seen(_grads: object) -> None:
        count[0] += 1

    handle = torch.autograd.graph.register_multi_grad_hook(feats, seen, mode="any")
    try:
        run()  # type: ignore[operator]
    finally:
        handle.remove()
    return count[0]


@pytest.mark.parametrize("mode", ["exact", "feature"])
@pytest.mark.parametrize("local", [[0, 1, 2], [0, 2], [1], []])
def test_same_passes_whatever_the_rank_holds(mode: str, local: list[int]) -> None:
    """One pass per task of the step, plus the batched pass through the shared part in exact
    mode: K + 1 or K, with all, some or none of the tasks labelled here."""
    shared, feats, losses = setup()
    params = list(shared.parameters())
    batch = batch_of(losses, local)
    n = passes_during(feats, lambda: uneven_gradients(batch, feats, mode, params, True))
    assert n == len(TASKS) + (1 if mode == "exact" else 0)


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_local_rows_are_the_tasks_gradients_and_absent_rows_zero(mode: str) -> None:
    shared, feats, losses = setup()
    params = list(shared.parameters())
    local = [0, 2]
    got = uneven_gradients(batch_of(losses, local), feats, mode, params, True)
    ref = task_gradients([losses[TASKS[j]] for j in local], feats, mode=mode,
                         shared_params=params, with_heads=True)
    for block, ref_block in zip(got.blocks, ref.blocks, strict=True):
        torch.testing.assert_close(block[local], ref_block, rtol=1e-6, atol=1e-7)
        assert torch.equal(block[1], torch.zeros_like(block[1]))
    assert got.head_grads is not None and ref.head_grads is not None
    for mine, theirs in zip(got.head_grads, ref.head_grads, strict=True):
        assert [id(leaf) for leaf, _ in mine] == [id(leaf) for leaf, _ in theirs]
        for (_, g), (_, h) in zip(mine, theirs, strict=True):
            torch.testing.assert_close(g, h)
    # the Gramian of the rows: the local tasks' Gramian, zero where an absent task is
    torch.testing.assert_close(got.gramian[[0, 2]][:, [0, 2]], ref.gramian)
    assert float(got.gramian[1].abs().sum()) == 0.0


def test_zero_passes_write_no_gradient() -> None:
    """The passes of a rank with no label leave every ``.grad`` untouched (the application
    of the decision is what writes them)."""
    shared, feats, losses = setup()
    params = list(shared.parameters())
    uneven_gradients(batch_of(losses, []), feats, "exact", params, True)
    assert all(p.grad is None for p in params)
