"""Per-task losses and metrics of a model over a data set (labelled samples only)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks import Task
from .devices import Precision, autocast

Results = dict[str, dict[str, float]]


def to_device(x: Any, device: torch.device) -> Any:
    """``x`` (a tensor, or a mapping or sequence of them) moved to ``device``."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, tasks: Sequence[Task], data: Iterable[Any], device: torch.device,
    precision: Precision = "fp32",
) -> Results:
    """``{task: {"loss": ..., metric: ...}}`` over ``data``, streamed batch by batch through
    torchmetrics (:class:`~manytask.metrics.TaskEvaluator`): no output is gathered."""
    from ..metrics import TaskEvaluator

    model.eval()
    evaluator = TaskEvaluator(tasks, device)
    for x, targets in data:
        with autocast(device, precision):
            outputs = model(to_device(x, device))
        evaluator.update({k: v.float() for k, v in outputs.items()}, targets)
    return evaluator.compute()
