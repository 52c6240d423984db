"""Shared helpers of the gradient-balancing tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from manytask import HardSharing, Task
from manytask.balancers.registry import build


def random_jacobian(k: int, p: int, *, rank: int | None = None, seed: int = 0) -> Tensor:
    """A (k, p) float64 matrix of task gradients, of the given rank if asked."""
    gen = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(k, p, generator=gen, dtype=torch.float64)
    left = torch.randn(k, rank, generator=gen, dtype=torch.float64)
    return left @ torch.randn(rank, p, generator=gen, dtype=torch.float64)


def small_model(names: tuple[str, ...], seed: int = 0) -> HardSharing:
    torch.manual_seed(seed)
    tasks = [Task.regression(n) for n in names]
    return HardSharing(tasks, in_features=4, hidden=(6, 5))


def model_losses(
    model: HardSharing, names: tuple[str, ...], seed: int = 1
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-task MSE losses of ``model`` on a fixed random batch, and the shared features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=gen)
    outputs, feats = model(x, return_features=True)
    losses = {}
    for i, n in enumerate(names):
        target = torch.randn(8, 1, generator=gen) * (i + 1)
        losses[n] = ((outputs[n] - target) ** 2).mean()
    return losses, feats


def names(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


def make(name: str, k: int, **params: Any) -> Any:
    """Build balancer ``name`` set up for ``k`` tasks (typed ``Any`` to reach its state)."""
    method = build(name, params)
    method.setup(names(k))
    return method


def decide_gramian(method: Any, G: Tensor, tasks: list[str] | None = None) -> Tensor:
    tasks = tasks or list(method.task_names)
    return method.decide(torch.ones(len(tasks)), tasks, G).weights
