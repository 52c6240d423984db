"""Tasks: a name, a loss, metrics with their direction, and the missing-label convention.

Targets travel as a mapping ``{task_name: tensor}``. A task absent from the mapping, or a
sample whose label is missing, contributes nothing to that task's loss:

* classification targets are integer class indices; a negative index marks a missing label;
* binary, multi-label and regression targets are floats; ``NaN`` marks a missing label (for
  multi-label and multi-output regression: a row with any ``NaN`` counts as unlabelled).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .losses import Loss, make_loss
from .metrics.catalogue import METRICS, build_metric, metric_names_for, prepare
from .metrics.stream import finite_value
from .registry import RegistryError

TaskKind = Literal["classification", "binary", "multilabel", "regression"]


@dataclass(frozen=True)
class Metric:
    """A per-task metric by name (see :data:`manytask.metrics.METRICS`), computed by
    torchmetrics on labelled samples only.

    :meth:`build` returns a fresh streaming torchmetrics object for the task;
    :meth:`fn` computes the metric on whole tensors (raw outputs, labelled targets).
    """

    name: str
    higher_is_better: bool
    kind: str
    out_features: int

    def build(self) -> Any:
        return build_metric(self.name, self.kind, self.out_features)

    def fn(self, outputs: Tensor, targets: Tensor) -> float:
        # the width is read from the outputs, so one Metric serves heads of any width
        width = int(outputs.reshape(outputs.shape[0], -1).shape[1]) if outputs.dim() > 1 else 1
        metric = build_metric(self.name, self.kind, width)
        metric.update(*prepare(self.kind, outputs, targets))
        return finite_value(metric)


# The metrics earlier versions exported by name (still used by scripts): binary AUROC,
# accuracies, regression errors of one output.
ACCURACY = Metric("accuracy", True, "classification", 2)
BINARY_ACCURACY = Metric("accuracy", True, "binary", 1)
AUC = Metric("auc", True, "binary", 1)
MSE = Metric("mse", False, "regression", 1)
MAE = Metric("mae", False, "regression", 1)

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "binary": ("auc", "accuracy"),
    "multilabel": ("f1_macro", "accuracy"),
    "regression": ("mse", "mae"),
}


def make_metrics(names: Sequence[str] | None, kind: str, out_features: int,
                 where: str) -> tuple[Metric, ...]:
    """The metrics ``names`` (default: the kind's) for a task; the first is its main metric."""
    chosen = tuple(names) if names else DEFAULT_METRICS[kind]
    if len(set(chosen)) != len(chosen):
        raise RegistryError(f"{where}: a metric is listed twice in {list(chosen)}")
    out = []
    for name in chosen:
        definition = METRICS.get(name)  # unknown name: one line with a hint
        if kind not in definition.builders:
            raise RegistryError(f"{where}: metric {name!r} does not apply to a {kind} task; "
                                f"choose from {metric_names_for(kind)}")
        out.append(Metric(name, definition.higher_is_better, kind, out_features))
    return tuple(out)


class TargetError(ValueError):
    """A target tensor does not fit its task (shape, dtype or value range)."""


class OutputError(ValueError):
    """A model output does not fit its task: the head's width is not the task's."""


@dataclass(frozen=True)
class Task:
    """One task of a multi-task model.

    Build tasks with :meth:`classification`, :meth:`binary`, :meth:`multilabel` or
    :meth:`regression` (or :meth:`of_kind`). ``out_features`` is the width of the head's
    output; ``metrics[0]`` is the task's main metric; ``loss_fn`` its loss (the kind's default
    unless chosen by name, see :data:`manytask.losses.LOSSES`).
    """

    name: str
    kind: TaskKind
    out_features: int
    metrics: tuple[Metric, ...] = field(default=())
    loss_fn: Loss | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def of_kind(cls, name: str, kind: str, out_features: int = 1, *,
                loss: str | None = None, loss_params: Mapping[str, Any] | None = None,
                metrics: Sequence[str] | None = None) -> Task:
        """A task of ``kind`` with ``out_features`` outputs (classes, labels or values), the
        loss ``loss`` (with ``loss_params``) and the metrics named ``metrics``."""
        where = f"task {name!r}"
        if kind not in DEFAULT_METRICS:
            raise RegistryError(f"{where}: kind must be one of {list(DEFAULT_METRICS)}, "
                                f"got {kind!r}")
        least = {"classification": 2, "binary": 1, "multilabel": 1, "regression": 1}[kind]
        if kind == "binary" and out_features != 1:
            raise ValueError(f"{where}: a binary task has one output, got {out_features}")
        if out_features < least:
            what = "num_classes" if kind == "classification" else "dim"
            raise ValueError(f"{where}: {what} must be >= {least}, got {out_features}")
        loss_fn = make_loss(loss, dict(loss_params or {}), kind, out_features, where)
        return cls(name, kind, out_features,  # type: ignore[arg-type]
                   make_metrics(metrics, kind, out_features, where), loss_fn)

    @classmethod
    def classification(cls, name: str, num_classes: int, **options: Any) -> Task:
        return cls.of_kind(name, "classification", num_classes, **options)

    @classmethod
    def binary(cls, name: str, **options: Any) -> Task:
        return cls.of_kind(name, "binary", 1, **options)

    @classmethod
    def multilabel(cls, name: str, num_labels: int, **options: Any) -> Task:
        """One binary decision per label: targets ``(batch, num_labels)`` of 0/1."""
        return cls.of_kind(name, "multilabel", num_labels, **options)

    @classmethod
    def regression(cls, name: str, dim: int = 1, **options: Any) -> Task:
        return cls.of_kind(name, "regression", dim, **options)

    @property
    def main_metric(self) -> Metric | None:
        return self.metrics[0] if self.metrics else None

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
        if self.kind in ("binary", "multilabel"):
            known = target[~torch.isnan(target)]
            if known.numel() and bool(((known < 0) | (known > 1)).any()):
                raise TargetError(f"task {self.name!r}: {self.kind} targets must lie in [0, 1]")

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
        loss_fn = self.loss_fn or make_loss(None, None, self.kind, self.out_features,
                                            f"task {self.name!r}")
        return loss_fn(output[mask], target[mask])


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
