"""Multi-task architectures for dense tasks on any backbone of :mod:`.backbones`.

Every model is a :class:`~manytask.models.MultiTaskModel`: ``model(x)`` returns
``{task: (B, C_task, H, W)}`` at the input's resolution, ``return_features=True`` also returns
what the heads read, so every training method works on dense tasks in exact and feature mode
(the feature Gramian then sums over pixels as well as samples).

* :class:`DenseHardSharing`: the backbone shared, one decoder per task (hard parameter
  sharing, Caruana 1997; the "split" baseline of MTAN and LibMTL).
* :func:`dense_mtan`: MTAN's task attention modules (Liu et al., CVPR 2019, Sec. 3.2) between
  the backbone's stages, each task's attended map read by its decoder.
* :class:`DenseCrossStitch`: one backbone per task, the stages' outputs mixed by cross-stitch
  units (Misra et al., CVPR 2016, eq. 1: ``x~_i = sum_j alpha_ij x_j``, one K x K matrix per
  stage, initialised at ``self_weight`` on the diagonal).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import MultiTaskModel
from ..mtan import MTAN
from ..per_task import PerTaskModel
from .backbones import Backbone, SegNetBackbone


class DenseHead(nn.Module):
    """A task decoder: 3x3 conv, BN, ReLU, 1x1 conv to the task's channels, then bilinear
    upsampling by the backbone's stride to the input's resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, out_channels, 1))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        if self.stride > 1:
            out = F.interpolate(out, scale_factor=self.stride, mode="bilinear",
                                align_corners=False)
        return out


def dense_heads(tasks: Sequence[Any], channels: int, stride: int, hidden: int = 32
                ) -> dict[str, nn.Module]:
    return {t.name: DenseHead(channels, t.out_features, stride, hidden) for t in tasks}


class DenseHardSharing(MultiTaskModel):
    """The backbone shared by all tasks, one :class:`DenseHead` per task."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, *, head_hidden: int = 32):
        super().__init__(backbone, dense_heads(tasks, backbone.channels[-1], backbone.stride,
                                               head_hidden))


def dense_mtan(tasks: Sequence[Any], backbone: Backbone, *, head_hidden: int = 32) -> MTAN:
    """MTAN on the stages of ``backbone`` with dense decoders (see the module docstring)."""
    blocks = list(backbone.blocks)
    return MTAN(tasks, blocks, list(backbone.channels),
                heads=dense_heads(tasks, backbone.channels[-1], backbone.stride, head_hidden))


class CrossStitchBody(nn.Module):
    def __init__(self, backbone: Backbone, task_names: Sequence[str], self_weight: float):
        super().__init__()
        self.task_names = tuple(task_names)
        k = len(self.task_names)
        self.columns = nn.ModuleList(copy.deepcopy(backbone) for _ in range(k))
        init = torch.full((k, k), (1.0 - self_weight) / max(k - 1, 1))
        init.fill_diagonal_(self_weight if k > 1 else 1.0)
        self.stitch = nn.ParameterList(nn.Parameter(init.clone())
                                       for _ in range(len(backbone.blocks)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = [x] * len(self.columns)
        for j, alpha in enumerate(self.stitch):
            outs = torch.stack([_block(col, j)(m) for col, m in zip(self.columns, maps,
                                                                  strict=True)])
            mixed = torch.einsum("ij,j...->i...", alpha, outs)
            maps = list(mixed.unbind(0))
        return dict(zip(self.task_names, maps, strict=True))


def _block(column: nn.Module, j: int) -> nn.Module:
    blocks: nn.ModuleList = column.blocks  # type: ignore[assignment]
    return blocks[j]


class DenseCrossStitch(PerTaskModel):
    """Cross-stitch networks on dense tasks (see the module docstring). The backbone must
    apply its ``blocks`` in sequence (ResNet does; SegNet's pooling indices do not fit)."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, *, self_weight: float = 0.9,
                 head_hidden: int = 32):
        if isinstance(backbone, SegNetBackbone):
            raise ValueError("DenseCrossStitch: the SegNet backbone's stages are not a plain "
                             "sequence (max-unpooling needs the encoder's indices); use resnet")
        names = [t.name for t in tasks]
        super().__init__(CrossStitchBody(backbone, names, self_weight),
                         dense_heads(tasks, backbone.channels[-1], backbone.stride, head_hidden))

    @property
    def stitch_weights(self) -> list[Tensor]:
        body: CrossStitchBody = self.shared  # type: ignore[assignment]
        return [a.detach().clone() for a in body.stitch]
