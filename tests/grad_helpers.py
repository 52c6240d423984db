"""Reference per-task gradients for tests: one independent autograd call per loss."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


def per_task_grads(losses: Mapping[str, Tensor] | Iterable[Tensor], params: list[Tensor]) -> Tensor:
    """Rows: each loss's gradient w.r.t. ``params``, flattened, in float64 (zeros where a
    parameter does not reach the loss)."""
    values = losses.values() if isinstance(losses, Mapping) else losses
    rows = []
    for loss in values:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows).double()
