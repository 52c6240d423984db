"""Per-task losses and metrics of a model over a data set (labelled samples only)."""

from __future__ import annotations

import math
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
    """``{task: {"loss": ..., metric: ...}}`` over ``data``; the outputs are gathered in
    float32 and each metric computed once on all labelled samples."""
    model.eval()
    outs: dict[str, list[Tensor]] = {t.name: [] for t in tasks}
    tgts: dict[str, list[Tensor]] = {t.name: [] for t in tasks}
    for x, targets in data:
        with autocast(device, precision):
            outputs = model(to_device(x, device))
        for task in tasks:
            if task.name not in targets:
                continue
            target = targets[task.name]
            task.check_target(outputs[task.name], target)
            mask = task.labelled(target)
            outs[task.name].append(outputs[task.name][mask.to(device)].float().cpu())
            tgts[task.name].append(target[mask].cpu())
    results: Results = {}
    for task in tasks:
        if not outs[task.name]:
            continue
        out, tgt = torch.cat(outs[task.name]), torch.cat(tgts[task.name])
        if out.shape[0] == 0:
            continue
        loss = task.loss(out, tgt)
        results[task.name] = {"loss": float(loss) if loss is not None else math.nan}
        for metric in task.metrics:
            results[task.name][metric.name] = metric.fn(out, tgt)
    return results
