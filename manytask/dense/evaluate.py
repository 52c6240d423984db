"""Evaluate a dense multi-task model with streaming meters (no outputs kept in memory)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .tasks import DenseTask


@torch.no_grad()
def evaluate_dense(model: nn.Module, batches: Iterable[tuple[Tensor, Mapping[str, Tensor]]],
                   tasks: Sequence[DenseTask], *, sync: bool = True,
                   process_group: Any = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` over ``batches``; under ``torchrun`` (``sync``) every
    process's sums are added before the metrics are computed, so each rank reports the metrics
    of the whole evaluation set."""
    meters = {t.name: t.meter() for t in tasks}
    was_training = model.training
    model.eval()
    try:
        for x, targets in batches:
            outputs = model(x)
            for task in tasks:
                if task.name in targets:
                    meters[task.name].update(outputs[task.name].float(), targets[task.name])
    finally:
        model.train(was_training)
    if sync:
        for meter in meters.values():
            meter.sync(process_group)
    return {name: meter.compute() for name, meter in meters.items()}


def directions(tasks: Sequence[DenseTask]) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` for Δm (:func:`manytask.evaluation.delta_m`)."""
    return {t.name: dict(t.meter().higher_is_better) for t in tasks}
