"""AdaMerging: merging coefficients learned by entropy minimisation on unlabelled inputs.

Yang et al., 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning" (ICLR), Sec. 3:
the merged encoder is ``theta = theta_0 + sum_k lambda_k tau_k`` (task-wise) or, per layer
``l``, ``theta^l = theta_0^l + sum_k lambda_k^l tau_k^l`` (layer-wise), and the coefficients
minimise the summed Shannon entropy of each task's predictions (the merged encoder followed by
that task's own, frozen head) on unlabelled inputs of that task, by Adam. The paper
initialises every coefficient at 0.3; that is our default.

Conventions: a "layer" is one parameter tensor of the encoder (the finest split); buffers come
from the base encoder; coefficients are clamped to ``bounds`` (default [0, 1]) after each step,
our choice to keep them in the range task arithmetic uses. Each step reads one batch per task
(cycling through a loader when it ends); the result reports how many batches each loader gave.
The merged parameters are one flat vector ``theta_0 + sum_k lambda_k[layer] * tau_k``
computed in a single vectorised expression per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .taskvectors import TaskVectors, check_learning, prediction_entropy


@dataclass
class AdaMergingResult:
    """The merged encoder state dict, the learned coefficients and the optimisation trace."""

    state_dict: dict[str, Tensor]
    coefficients: Tensor  # (K,) task-wise or (K, L) layer-wise, L = len(layer_names)
    layer_names: list[str]
    entropy: list[float]  # summed mean entropy over tasks, before each step
    batches_read: list[int]


def adamerging(
    encoder: nn.Module,
    task_state_dicts: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    granularity: str = "layer",
    steps: int = 100,
    lr: float = 1e-3,
    init: float = 0.3,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> AdaMergingResult:
    """Learn AdaMerging coefficients (see the module docstring).

    ``encoder`` holds the base (pre-trained) weights; ``task_state_dicts[k]`` the fine-tuned
    encoder of task ``k`` (same names); ``heads[k]`` maps encoder features to task ``k``'s
    logits; ``loaders[k]`` yields unlabelled inputs of task ``k`` (or tuples whose first item
    is the input). Returns the merged encoder's state dict.
    """
    check_learning("adamerging", len(task_state_dicts), heads, loaders, steps=steps, lr=lr,
                   min_tasks=2)
    if granularity not in ("task", "layer"):
        raise ValueError(f"adamerging: granularity must be 'task' or 'layer', got {granularity!r}")
    if bounds is not None and not bounds[0] <= init <= bounds[1]:
        raise ValueError(f"adamerging: init {init} lies outside bounds {bounds}")

    vectors = TaskVectors(encoder, task_state_dicts, "adamerging")
    lam = torch.full(vectors.coefficient_shape(granularity), float(init),
                     dtype=vectors.base.dtype, requires_grad=True)

    cycles = [BatchCycle(loader, f"loaders[{i}]", "adamerging") for i, loader in enumerate(loaders)]
    opt = torch.optim.Adam([lam], lr=lr)
    history: list[float] = []
    for _ in range(steps):
        flat = vectors.merged(lam)
        loss = torch.zeros((), dtype=vectors.base.dtype)
        for head, cycle in zip(heads, cycles, strict=True):
            features = vectors.forward(flat, cycle.next_input())
            loss = loss + prediction_entropy(head(features))
        history.append(float(loss.detach()))
        # Gradient for the coefficients only: the heads and the encoder are left untouched.
        (lam.grad,) = torch.autograd.grad(loss, [lam])
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                lam.clamp_(*bounds)
    state = vectors.state_dict(vectors.merged(lam.detach()))
    return AdaMergingResult(state, lam.detach().clone(), vectors.names, history,
                            [c.count for c in cycles])
