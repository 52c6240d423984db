"""Streaming evaluation of several tasks: per-task loss and metrics, batch by batch.

Nothing is gathered on the CPU: each batch updates the torchmetrics objects (on the outputs'
device) and a running weighted mean of the loss. With ``sync=True`` and a process group
initialised, :meth:`TaskEvaluator.compute` synchronises every state across the processes
(torchmetrics' own reduction), so each process scoring its shard of the evaluation set gives
the result of one process scoring all of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from .catalogue import prepare, value


class _Task(Protocol):  # what a manytask.Task offers; metrics must not import tasks
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def metrics(self) -> Sequence[Any]: ...

    def labelled(self, target: Tensor) -> Tensor: ...
    def check_target(self, output: Tensor, target: Tensor) -> None: ...
    def loss(self, output: Tensor, target: Tensor) -> Tensor | None: ...


class TaskEvaluator:
    """Per-task mean loss and metrics over a stream of batches (labelled samples only)."""

    def __init__(self, tasks: Sequence[_Task], device: torch.device | str = "cpu",
                 *, sync: bool = False) -> None:
        from torchmetrics import MeanMetric

        self.tasks = list(tasks)
        self.device = torch.device(device)
        self.sync = sync
        self.metrics = {
            t.name: {m.name: m.build().to(self.device) for m in t.metrics} for t in self.tasks
        }
        self.losses = {t.name: MeanMetric().to(self.device) for t in self.tasks}
        for group in (*self.metrics.values(), self.losses):
            for metric in group.values():
                metric.sync_on_compute = sync
        self.seen = dict.fromkeys(self.metrics, 0)

    @torch.no_grad()
    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for task in self.tasks:
            if task.name not in targets:
                continue
            output = outputs[task.name]
            target = targets[task.name].to(output.device)
            task.check_target(output, target)
            mask = task.labelled(target)
            if not bool(mask.any()):
                continue
            out, tgt = output[mask], target[mask]
            loss = task.loss(out, tgt)
            if loss is not None:
                self.losses[task.name].update(loss.detach().float(), weight=out.shape[0])
            preds, labels = prepare(task.kind, out, tgt)
            for metric in self.metrics[task.name].values():
                metric.update(preds, labels)
            self.seen[task.name] += int(out.shape[0])

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {"loss": ..., metric: ...}}`` for the tasks with labelled samples (under
        ``sync``, seen by any process)."""
        seen = dict(self.seen)
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = torch.tensor([seen[t.name] for t in self.tasks], device=self.device)
            torch.distributed.all_reduce(counts)
            seen = {t.name: int(c) for t, c in zip(self.tasks, counts.tolist(), strict=True)}
        results: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            if not seen[task.name]:
                continue
            row = {"loss": value(self.losses[task.name])}
            for name, metric in self.metrics[task.name].items():
                row[name] = finite_value(metric)
            results[task.name] = row
        return results


def finite_value(metric: Any) -> float:
    # torchmetrics warns and returns 0 or nan where a metric is undefined (AUROC with one
    # class present, a constant prediction's correlation); report nan, never a made-up 0
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = value(metric)
    if any("undefined" in str(w.message).lower() or "no positive" in str(w.message).lower()
           or "constant" in str(w.message).lower() or "no negative" in str(w.message).lower()
           for w in caught):
        return math.nan
    return result
