"""Tasks: a name, a loss, metrics with their direction, and the missing-label convention.

Targets travel as a mapping ``{task_name: tensor}``. A task absent from the mapping, or a
sample whose label is missing, contributes nothing to that task's loss:

* classification targets are integer class indices; a negative index marks a missing label;
* binary and regression targets are floats; ``NaN`` marks a missing label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["classification", "binary", "regression"]


@dataclass(frozen=True)
class Metric:
    """A per-task metric computed on labelled samples only.

    ``fn(outputs, targets)`` receives the model's raw outputs (logits for classification and
    binary tasks) and the labelled targets, both as tensors on the CPU, and returns a float.
    """

    name: str
    fn: Callable[[Tensor, Tensor], float]
    higher_is_better: bool


def _accuracy(outputs: Tensor, targets: Tensor) -> float:
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def _binary_accuracy(outputs: Tensor, targets: Tensor) -> float:
    return float(((outputs.reshape(-1) > 0).float() == targets.reshape(-1)).float().mean())


def _auc(outputs: Tensor, targets: Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    y = targets.reshape(-1).numpy()
    if np.unique(y).size < 2:  # AUC is undefined with one class present
        return float("nan")
    return float(roc_auc_score(y, outputs.reshape(-1).float().numpy()))


def _mse(outputs: Tensor, targets: Tensor) -> float:
    return float(F.mse_loss(outputs.reshape(targets.shape).float(), targets.float()))


def _mae(outputs: Tensor, targets: Tensor) -> float:
    return float(F.l1_loss(outputs.reshape(targets.shape).float(), targets.float()))


ACCURACY = Metric("accuracy", _accuracy, higher_is_better=True)
BINARY_ACCURACY = Metric("accuracy", _binary_accuracy, higher_is_better=True)
AUC = Metric("auc", _auc, higher_is_better=True)
MSE = Metric("mse", _mse, higher_is_better=False)
MAE = Metric("mae", _mae, higher_is_better=False)


class TargetError(ValueError):
    """A target tensor does not fit its task (shape, dtype or value range)."""


class OutputError(ValueError):
    """A model output does not fit its task: the head's width is not the task's."""


@dataclass(frozen=True)
class Task:
    """One task of a multi-task model.

    Build tasks with :meth:`classification`, :meth:`binary` or :meth:`regression`.
    ``out_features`` is the width of the head's output.
    """

    name: str
    kind: TaskKind
    out_features: int
    metrics: tuple[Metric, ...] = field(default=())

    # ------------------------------------------------------------------ constructors
    @classmethod
    def classification(cls, name: str, num_classes: int) -> Task:
        if num_classes < 2:
            raise ValueError(f"task {name!r}: num_classes must be >= 2, got {num_classes}")
        return cls(name, "classification", num_classes, (ACCURACY,))

    @classmethod
    def binary(cls, name: str) -> Task:
        return cls(name, "binary", 1, (AUC, BINARY_ACCURACY))

    @classmethod
    def regression(cls, name: str, dim: int = 1) -> Task:
        if dim < 1:
            raise ValueError(f"task {name!r}: dim must be >= 1, got {dim}")
        return cls(name, "regression", dim, (MSE, MAE))

    # ------------------------------------------------------------------ labels
    def labelled(self, target: Tensor) -> Tensor:
        """Boolean mask over the batch: which samples carry a label for this task."""
        if self.kind == "classification":
            return target >= 0
        missing = torch.isnan(target)
        return ~missing.reshape(missing.shape[0], -1).any(dim=1)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        """Raise :class:`TargetError` naming this task if ``target`` cannot be its label."""
        self.check_output(output)
        if target.dim() == 0 or target.shape[0] != output.shape[0]:
            raise TargetError(
                f"task {self.name!r}: batch of {output.shape[0]} outputs but "
                f"{tuple(target.shape)[:1] or 'a scalar'} targets"
            )
        if self.kind == "classification":
            if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TargetError(
                    f"task {self.name!r}: classification targets must be integer class indices "
                    f"(negative = missing), got dtype {target.dtype}"
                )
            if target.dim() != 1:
                raise TargetError(
                    f"task {self.name!r}: classification targets must have shape (batch,), "
                    f"got {tuple(target.shape)}"
                )
            if target.numel() and int(target.max()) >= self.out_features:
                raise TargetError(
                    f"task {self.name!r}: label {int(target.max())} out of range for "
                    f"{self.out_features} classes"
                )
            return
        if not target.is_floating_point():
            raise TargetError(
                f"task {self.name!r}: {self.kind} targets must be floating point "
                f"(NaN = missing), got dtype {target.dtype}"
            )
        if target.reshape(target.shape[0], -1).shape[1] != self.out_features:
            raise TargetError(
                f"task {self.name!r}: expected {self.out_features} target value(s) per sample, "
                f"got shape {tuple(target.shape)}"
            )
        if torch.isinf(target).any():
            raise TargetError(f"task {self.name!r}: targets contain inf")
        if self.kind == "binary":
            known = target[~torch.isnan(target)]
            if known.numel() and bool(((known < 0) | (known > 1)).any()):
                raise TargetError(f"task {self.name!r}: binary targets must lie in [0, 1]")

    def check_output(self, output: Tensor) -> None:
        """Raise :class:`OutputError` if ``output`` is not ``(batch, out_features)`` (a
        binary or one-value regression head may also give ``(batch,)``): the model's head for
        this task does not match it, and the loss would fail deep inside torch."""
        shape = tuple(output.shape)
        if self.kind == "classification":
            ok = len(shape) == 2 and shape[1] == self.out_features
            expected = f"(batch, {self.out_features}) logits for {self.out_features} classes"
        else:
            ok = len(shape) >= 1 and math.prod(shape[1:]) == self.out_features
            expected = f"(batch, {self.out_features}) values"
        if not ok:
            raise OutputError(
                f"task {self.name!r}: the model's head outputs shape {shape}, expected "
                f"{expected}; does the head match the task?"
            )

    # ------------------------------------------------------------------ loss
    def loss(self, output: Tensor, target: Tensor) -> Tensor | None:
        """Mean loss over the labelled samples, or ``None`` when no sample is labelled."""
        self.check_target(output, target)
        mask = self.labelled(target)
        if not bool(mask.any()):
            return None
        out, tgt = output[mask], target[mask]
        if self.kind == "classification":
            return F.cross_entropy(out, tgt.long())
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                out.reshape(-1), tgt.reshape(-1).to(out.dtype)
            )
        return F.mse_loss(
            out.reshape(out.shape[0], -1), tgt.reshape(tgt.shape[0], -1).to(out.dtype)
        )


def task_losses(
    tasks: Sequence[Task], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per-task losses of the tasks that have at least one labelled sample in this batch."""
    unknown = set(targets) - {t.name for t in tasks}
    if unknown:
        raise TargetError(f"targets for unknown task(s) {sorted(unknown)}")
    losses: dict[str, Tensor] = {}
    for task in tasks:
        if task.name not in targets:
            continue
        if task.name not in outputs:
            raise TargetError(f"the model produced no output for task {task.name!r}")
        value = task.loss(outputs[task.name], targets[task.name].to(outputs[task.name].device))
        if value is not None:
            losses[task.name] = value
    return losses
