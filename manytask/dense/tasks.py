"""Dense task kinds: per-pixel targets, their usual losses, and their streaming metrics.

A :class:`DenseTask` has the interface of :class:`manytask.Task` that the training code uses
(``name``, ``kind``, ``loss(output, target)``, ``labelled``), so ``task_losses``,
``manytask.backward``, the balancers and the Trainer's training loop take dense tasks as they
are. Losses are means over *valid* pixels only, and ``None`` when a batch has none:

* ``segmentation``: cross-entropy, pixels equal to ``ignore_index`` skipped;
* ``depth``: L1 on pixels whose target is > 0 (as LibMTL on NYUv2);
* ``normal``: ``1 - cos`` between the L2-normalised prediction and the target on pixels whose
  target has non-zero norm (LibMTL's normal loss);
* ``edge``, ``saliency``: class-balanced binary cross-entropy (Xie and Tu, HED, ICCV 2015,
  eq. 2): positives weighted by ``beta = |Y-| / |Y|`` and negatives by ``1 - beta``
  (``pos_weight`` fixes ``beta`` instead); targets other than 0/1 are ignored.

Each kind's :meth:`DenseTask.meter` gives the streaming metrics of :mod:`.metrics`; its main
metric and direction (for Δm and model selection) are :attr:`DenseTask.main_metric` and
``meter().higher_is_better``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .fmeasure import FMeasureMeter
from .metrics import DepthMeter, Meter, NormalMeter, SegmentationMeter

DenseKind = Literal["segmentation", "depth", "normal", "edge", "saliency"]
MAIN_METRIC = {"segmentation": "miou", "depth": "abs_err", "normal": "mean_angle",
               "edge": "max_f", "saliency": "max_f"}


class DenseTargetError(ValueError):
    """A dense target does not fit its task (shape or values)."""


@dataclass(frozen=True)
class DenseTask:
    """One per-pixel task. Build with :meth:`segmentation`, :meth:`depth`, :meth:`normal`,
    :meth:`edge` or :meth:`saliency`; ``out_features`` is the head's number of channels."""

    name: str
    kind: DenseKind
    out_features: int
    ignore_index: int = -1
    pos_weight: float | None = None
    metrics: tuple = field(default=())  # the flat-task Metric list: dense tasks use meter()

    @classmethod
    def segmentation(cls, name: str, num_classes: int, ignore_index: int = -1) -> DenseTask:
        if num_classes < 2:
            raise ValueError(f"task {name!r}: num_classes must be >= 2, got {num_classes}")
        return cls(name, "segmentation", num_classes, ignore_index=ignore_index)

    @classmethod
    def depth(cls, name: str = "depth") -> DenseTask:
        return cls(name, "depth", 1)

    @classmethod
    def normal(cls, name: str = "normal") -> DenseTask:
        return cls(name, "normal", 3)

    @classmethod
    def edge(cls, name: str = "edge", pos_weight: float | None = None) -> DenseTask:
        return cls(name, "edge", 1, pos_weight=pos_weight)

    @classmethod
    def saliency(cls, name: str = "saliency", pos_weight: float | None = None) -> DenseTask:
        return cls(name, "saliency", 1, pos_weight=pos_weight)

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.kind]

    def meter(self) -> Meter:
        if self.kind == "segmentation":
            return SegmentationMeter(self.out_features, self.ignore_index)
        if self.kind == "depth":
            return DepthMeter()
        if self.kind == "normal":
            return NormalMeter()
        return FMeasureMeter(beta2=0.3 if self.kind == "saliency" else 1.0)

    def valid(self, target: Tensor) -> Tensor:
        """Boolean map of the pixels that carry a label, shape (B, H, W)."""
        if self.kind == "segmentation":
            return target != self.ignore_index
        if self.kind == "depth":
            return target.reshape(target.shape[0], *target.shape[-2:]) > 0
        if self.kind == "normal":
            return target.norm(dim=1) > 0
        t = target.reshape(target.shape[0], *target.shape[-2:])
        return (t == 0) | (t == 1)

    def labelled(self, target: Tensor) -> Tensor:
        """Which samples have at least one valid pixel."""
        return self.valid(target).reshape(target.shape[0], -1).any(1)

    def check_target(self, output: Tensor, target: Tensor) -> None:
        if output.dim() != 4 or output.shape[1] != self.out_features:
            raise DenseTargetError(
                f"task {self.name!r}: the head outputs shape {tuple(output.shape)}, expected "
                f"(batch, {self.out_features}, H, W)")
        spatial = tuple(target.shape[-2:])
        if spatial != tuple(output.shape[-2:]) or target.shape[0] != output.shape[0]:
            raise DenseTargetError(
                f"task {self.name!r}: target shape {tuple(target.shape)} does not match the "
                f"output {tuple(output.shape)}")
        if self.kind == "segmentation" and target.is_floating_point():
            raise DenseTargetError(f"task {self.name!r}: segmentation targets must be integer "
                                   f"class indices, got {target.dtype}")
        if self.kind == "normal" and (target.dim() != 4 or target.shape[1] != 3):
            raise DenseTargetError(f"task {self.name!r}: normal targets must be (B, 3, H, W), "
                                   f"got {tuple(target.shape)}")

    def loss(self, output: Tensor, target: Tensor) -> Tensor | None:
        """Mean loss over the valid pixels, or ``None`` when there is none."""
        self.check_target(output, target)
        valid = self.valid(target)
        count = int(valid.sum())
        if count == 0:
            return None
        if self.kind == "segmentation":
            if int(target[valid].max()) >= self.out_features or int(target[valid].min()) < 0:
                raise DenseTargetError(f"task {self.name!r}: a class index lies outside "
                                       f"[0, {self.out_features})")
            return F.cross_entropy(output, target.long(), ignore_index=self.ignore_index)
        if self.kind == "depth":
            t = target.reshape(output.shape)
            return (output - t.to(output.dtype)).abs()[valid.unsqueeze(1)].mean()
        if self.kind == "normal":
            pred = F.normalize(output, dim=1)
            cos = (pred * target.to(output.dtype)).sum(1)
            return 1.0 - cos[valid].mean()
        logits = output.reshape(valid.shape)[valid]
        t = target.reshape(valid.shape)[valid].to(output.dtype)
        positives = float(t.sum())
        beta = (1.0 - positives / count) if self.pos_weight is None else self.pos_weight
        weights = torch.where(t > 0.5, beta, 1.0 - beta)
        return F.binary_cross_entropy_with_logits(logits, t, weight=weights)
