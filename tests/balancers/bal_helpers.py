"""Shared helpers of the gradient-balancing tests (imported by the test modules)."""

from __future__ import annotations

import torch
from torch import Tensor

from manytask import HardSharing, Task


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
