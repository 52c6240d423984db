"""What :func:`manytask.backward` returns, and the check on a method's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..balancers.base import Balancer
from .gradients import cosine_similarity


@dataclass
class BackwardResult:
    """What one call of :func:`backward` decided.

    ``weights`` maps each present task to its coefficient; ``cosine`` is the pairwise cosine
    similarity of the task gradients (``None`` where none was computed: loss weightings, and
    steps on which a schedule reused earlier weights).
    """

    tasks: tuple[str, ...]
    weights: dict[str, float]
    losses: dict[str, float]
    gramian: Tensor | None = None

    @property
    def cosine(self) -> Tensor | None:
        return None if self.gramian is None else cosine_similarity(self.gramian)


def check_weights(method: Balancer, weights: Tensor, k: int) -> Tensor:
    """``weights`` if they are K finite values; a one-line error naming the method if not."""
    if weights.shape != (k,):
        raise RuntimeError(
            f"{method.name} returned weights of shape {tuple(weights.shape)}, expected ({k},)"
        )
    if not bool(torch.isfinite(weights).all()):
        raise FloatingPointError(f"{method.name} produced non-finite weights {weights.tolist()}")
    return weights


def result_of(
    tasks: tuple[str, ...], weights: Tensor, losses: Tensor, gramian: Tensor | None
) -> BackwardResult:
    w = weights.detach().double().tolist()
    lv = losses.detach().double().tolist()
    return BackwardResult(
        tasks=tasks,
        weights=dict(zip(tasks, w, strict=True)),
        losses=dict(zip(tasks, lv, strict=True)),
        gramian=gramian,
    )
