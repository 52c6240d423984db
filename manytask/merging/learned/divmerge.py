"""DivMerge: merging coefficients that minimise the Jensen-Shannon divergence to each expert.

"DivMerge: A divergence-based model merging method for multi-tasking" (2025, arXiv;
paper 80 of our reading list): the merged model is task arithmetic
``theta = theta_0 + sum_k lambda_k tau_k``
and the coefficients minimise, over unlabelled inputs of every task ``t``,

    sum_t  E_{x ~ D_t}  JS( p_theta(. | x, head_t)  ||  p_{theta_t}(. | x, head_t) ),

the divergence between the merged model's output distribution and the fine-tuned model's on
that task's inputs, with ``JS(p || q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q)/2``.
No labels are needed, and tasks are balanced by the divergence itself.

Conventions (ours): one coefficient per task (``granularity="task"``) or per task and tensor
(``"layer"``), starting at ``init`` (default ``1/K``), optimised by Adam, not clamped; the
experts' distributions are computed once per batch without gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .taskvectors import TaskVectors, check_learning


def js_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Mean over samples of the Jensen-Shannon divergence of two softmax distributions."""
    logp, logq = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0, dtype=logp.dtype))
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).mean()


@dataclass
class DivMergeResult:
    state_dict: dict[str, Tensor]
    coefficients: Tensor
    divergence: list[float]  # summed JS divergence over tasks, before each step


def divmerge(
    encoder: nn.Module,
    task_state_dicts: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    granularity: str = "task",
    steps: int = 100,
    lr: float = 1e-2,
    init: float | None = None,
) -> DivMergeResult:
    """Learn DivMerge coefficients (see the module docstring)."""
    k = len(task_state_dicts)
    check_learning("divmerge", k, heads, loaders, steps=steps, lr=lr, min_tasks=2)
    vectors = TaskVectors(encoder, task_state_dicts, "divmerge")
    start = 1.0 / k if init is None else float(init)
    coef = torch.full(vectors.coefficient_shape(granularity), start,
                      dtype=vectors.base.dtype, requires_grad=True)
    experts = [vectors.base + vectors.taus[t] for t in range(k)]
    opt = torch.optim.Adam([coef], lr=lr)
    cycles = [BatchCycle(loader, f"loaders[{i}]", "divmerge") for i, loader in enumerate(loaders)]
    trace: list[float] = []
    for _ in range(steps):
        flat = vectors.merged(coef)
        loss = torch.zeros((), dtype=vectors.base.dtype)
        for t, (head, cycle) in enumerate(zip(heads, cycles, strict=True)):
            x = cycle.next_input()
            with torch.no_grad():
                target = head(vectors.forward(experts[t], x))
            loss = loss + js_divergence(head(vectors.forward(flat, x)), target)
        trace.append(float(loss.detach()))
        (coef.grad,) = torch.autograd.grad(loss, [coef])
        opt.step()
    return DivMergeResult(vectors.state_dict(vectors.merged(coef.detach())),
                          coef.detach().clone(), trace)
