"""The engine schedule that recomputes a gradient-level method's weights every N steps
(the behaviour and its costs are described in :mod:`manytask.balancers.periodic`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class EverySteps(nn.Module):
    """The schedule: due on steps 0, N, 2N, ...; keeps the last weight of every task."""

    step: Tensor
    stored: Tensor

    def __init__(self, every: int) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"periodic: every must be an integer >= 1, got {every!r}")
        self.every = every
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("stored", torch.zeros(0, dtype=torch.float64))

    def setup(self, task_names: Sequence[str]) -> None:
        self.stored = torch.full((len(task_names),), float("nan"), dtype=torch.float64)

    def due(self) -> bool:
        """Whether the weights are recomputed at this step."""
        return int(self.step) % int(self.every) == 0

    def record(self, idx: Tensor, weights: Tensor) -> None:
        """Store the weights just computed for the tasks at ``idx`` and count the step."""
        self.stored[idx.to(self.stored.device)] = weights.detach().double().to(self.stored.device)
        self.step += 1

    def reuse(self, idx: Tensor) -> Tensor:
        """The stored weights of the tasks at ``idx`` (see the module docs for a task with
        none) and count the step."""
        self.step += 1
        weights = self.stored[idx.to(self.stored.device)].cpu()
        known = torch.isfinite(weights)
        fill = weights[known].mean() if bool(known.any()) else torch.tensor(1.0).double()
        return torch.where(known, weights, fill)
