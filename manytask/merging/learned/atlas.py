"""aTLAS: task vectors composed with a learned coefficient per parameter block and task.

Zhang et al., 2024, "Knowledge Composition using Task Vectors with Learned Anisotropic
Scaling" (NeurIPS), Sec. 3: each task vector is split into parameter blocks ``b`` and the
composed model is

    theta = theta_0 + sum_k sum_b lambda_{k,b} tau_{k,b},

one learnable coefficient per block and task ("anisotropic" scaling, where task arithmetic has
one per task). The coefficients are trained with a supervised loss on a few labelled examples
(few-shot), or without labels by minimising the prediction entropy (test-time adaptation);
only ``K x blocks`` numbers are learned.

Conventions (ours where the paper leaves room): a block is one parameter tensor unless
``blocks`` groups tensors under a common label; coefficients start at ``init`` (0: the
pre-trained model, as when aTLAS is used for few-shot adaptation) and are not clamped;
supervised steps read one labelled batch ``(x, y)`` per task and apply that task's head with
cross-entropy, unsupervised steps read inputs only and use the entropy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .taskvectors import OBJECTIVES, TaskVectors, check_learning, task_objective


@dataclass
class AtlasResult:
    """The composed encoder's state dict, the (K, blocks) coefficients and the loss trace."""

    state_dict: dict[str, Tensor]
    coefficients: Tensor
    block_names: list[str]
    losses: list[float]


def atlas(
    encoder: nn.Module,
    task_state_dicts: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    objective: str = "supervised",
    blocks: Mapping[str, str] | None = None,
    steps: int = 100,
    lr: float = 1e-2,
    init: float = 0.0,
) -> AtlasResult:
    """Learn aTLAS coefficients (see the module docstring).

    ``heads[k]`` maps encoder features to task ``k``'s logits; ``loaders[k]`` yields
    ``(x, y)`` batches (``objective="supervised"``) or inputs (``"entropy"``) of task ``k``.
    """
    check_learning("atlas", len(task_state_dicts), heads, loaders, steps=steps, lr=lr)
    if objective not in OBJECTIVES:
        raise ValueError(f"atlas: objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    vectors = TaskVectors(encoder, task_state_dicts, "atlas", blocks=blocks)
    coef = torch.full(vectors.coefficient_shape("block"), float(init),
                      dtype=vectors.base.dtype, requires_grad=True)
    opt = torch.optim.Adam([coef], lr=lr)
    cycles = [BatchCycle(loader, f"loaders[{i}]", "atlas") for i, loader in enumerate(loaders)]
    losses: list[float] = []
    for _ in range(steps):
        flat = vectors.merged(coef)
        loss = task_objective(vectors, flat, heads, cycles, objective)
        losses.append(float(loss.detach()))
        (coef.grad,) = torch.autograd.grad(loss, [coef])
        opt.step()
    return AtlasResult(vectors.state_dict(vectors.merged(coef.detach())),
                       coef.detach().clone(), vectors.block_names, losses)
