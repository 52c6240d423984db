"""Representation Surgery: a light per-task module that pulls merged features to an expert's.

Yang et al., 2024, "Representation Surgery for Multi-Task Model Merging" (ICML), Sec. 4: the
merged model's features ``z`` are edited per task as ``z - Phi_t(z)`` with a small module
``Phi_t``, trained on unlabelled inputs of task ``t`` to minimise the L1 distance between the
edited merged features and the features of task ``t``'s own fine-tuned (expert) model. The
merged and expert encoders stay frozen; only ``Phi_t`` learns.

Our module (a stated choice): ``Phi(z) = W_up relu(W_down z + b)``, rank ``rank``, with
``W_up`` starting at zero so that surgery starts as the identity. The loss is the mean
absolute difference over samples and feature dimensions. Each step reads one batch per task
(cycling through its loader); the result reports the count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle


class SurgeryModule(nn.Module):
    """``z -> z - W_up relu(W_down z + b)``: the identity at initialisation."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        if dim < 1 or rank < 1:
            raise ValueError(f"SurgeryModule: dim and rank must be >= 1, got {dim}, {rank}")
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, z: Tensor) -> Tensor:
        return z - self.up(torch.relu(self.down(z)))


@dataclass
class SurgeryResult:
    """One trained module per task, each task's loss before every step, batches read."""

    modules: list[SurgeryModule]
    losses: list[list[float]]
    batches_read: list[int]


def representation_surgery(
    merged_encoder: nn.Module,
    expert_encoders: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    rank: int = 16,
    steps: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
) -> SurgeryResult:
    """Train one :class:`SurgeryModule` per task (see the module docstring).

    ``loaders[t]`` yields unlabelled inputs of task ``t`` (or tuples whose first item is the
    input). Apply the result as ``head_t(modules[t](merged_encoder(x)))``.
    """
    if len(expert_encoders) != len(loaders) or not expert_encoders:
        raise ValueError(
            f"representation_surgery: {len(expert_encoders)} experts for {len(loaders)} loaders"
        )
    for name, value, low in (("rank", rank, 1), ("steps", steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"representation_surgery: {name} must be an integer >= {low}, "
                             f"got {value!r}")
    if not lr > 0:
        raise ValueError(f"representation_surgery: lr must be > 0, got {lr!r}")
    torch.manual_seed(seed)  # the down-projections' initialisation
    modules: list[SurgeryModule] = []
    losses: list[list[float]] = []
    counts: list[int] = []
    for t, (expert, loader) in enumerate(zip(expert_encoders, loaders, strict=True)):
        cycle = BatchCycle(loader, f"loaders[{t}]", "representation_surgery")
        module: SurgeryModule | None = None
        opt: torch.optim.Optimizer | None = None
        trace: list[float] = []
        for _ in range(steps):
            x = cycle.next_input()
            with torch.no_grad():
                z, target = merged_encoder(x), expert(x)
            if z.shape != target.shape:
                raise ValueError(
                    f"representation_surgery: merged features {tuple(z.shape)} and expert "
                    f"{t}'s {tuple(target.shape)} differ in shape"
                )
            if module is None:
                module = SurgeryModule(z.shape[-1], rank).to(z.dtype)
                opt = torch.optim.Adam(module.parameters(), lr=lr)
            assert opt is not None
            loss = (module(z) - target).abs().mean()
            trace.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if module is None:  # steps == 0: the identity, sized from one batch
            with torch.no_grad():
                dim = merged_encoder(cycle.next_input()).shape[-1]
            module = SurgeryModule(dim, rank)
        modules.append(module.eval())
        losses.append(trace)
        counts.append(cycle.count)
    return SurgeryResult(modules, losses, counts)
