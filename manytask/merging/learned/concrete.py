"""Concrete subspace learning: one shared Concrete mask over the task vectors, then merging.

Tang et al., 2023, "Concrete Subspace Learning based Interference Elimination for Multi-task
Model Fusion": a binary mask ``m`` over the parameters, shared by all tasks, selects a common
subspace in which the task vectors are merged (task arithmetic here:
``theta = theta_0 + scale * sum_k m (.) tau_k``), and the mask is learned so that the merged
model does well, without labels, by minimising the prediction entropy on unlabelled inputs
(the upper level of the paper's bi-level problem; task arithmetic is the lower level's merge).

The mask is learned through its binary Concrete relaxation (Maddison et al., 2017): with
logits ``x`` (so ``P(m = 1) = sigma(x)``) and temperature ``lambda``,

    m_hat = sigma( (log(u / (1 - u)) + x) / lambda ),   u ~ Uniform(0, 1),

which is differentiable in ``x`` and tends to a Bernoulli(sigma(x)) sample as lambda -> 0.
The final mask is binarised as ``m = 1[sigma(x) > 1/2]``, i.e. ``x > 0``.

Conventions (ours): logits start at ``init_logit`` (default 3: sigma = 0.95, nearly the
whole task vectors), one mask entry per parameter, Adam on the logits, one unlabelled batch per
task and step, draws from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .taskvectors import TaskVectors, check_learning, task_objective


def concrete_mask(logits: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """One binary-Concrete sample ``sigma((log(u/(1-u)) + logits) / temperature)``."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
    u = u.clamp(torch.finfo(logits.dtype).tiny, 1.0 - torch.finfo(logits.dtype).eps)
    return torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / temperature)


@dataclass
class ConcreteResult:
    state_dict: dict[str, Tensor]
    mask: Tensor           # (P,) binary, over the encoder's parameters in named order
    logits: Tensor
    entropy: list[float]


def concrete_task_arithmetic(
    encoder: nn.Module,
    task_state_dicts: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    scale: float = 0.3,
    temperature: float = 0.5,
    steps: int = 100,
    lr: float = 0.1,
    init_logit: float = 3.0,
    seed: int = 0,
) -> ConcreteResult:
    """Learn the shared Concrete mask and merge in its subspace (module docstring)."""
    check_learning("concrete_task_arithmetic", len(task_state_dicts), heads, loaders,
                   steps=steps, lr=lr)
    if not temperature > 0:
        raise ValueError(f"concrete_task_arithmetic: temperature must be > 0, got "
                         f"{temperature!r}")
    vectors = TaskVectors(encoder, task_state_dicts, "concrete_task_arithmetic")
    summed = vectors.taus.sum(0)
    logits = torch.full_like(summed, float(init_logit), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    cycles = [BatchCycle(loader, f"loaders[{i}]", "concrete_task_arithmetic")
              for i, loader in enumerate(loaders)]
    trace: list[float] = []
    for _ in range(steps):
        flat = vectors.base + scale * concrete_mask(logits, temperature, gen) * summed
        loss = task_objective(vectors, flat, heads, cycles, "entropy")
        trace.append(float(loss.detach()))
        (logits.grad,) = torch.autograd.grad(loss, [logits])
        opt.step()
    mask = (logits.detach() > 0).to(summed.dtype)
    final = vectors.base + scale * mask * summed
    return ConcreteResult(vectors.state_dict(final), mask, logits.detach().clone(), trace)
