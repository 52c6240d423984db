"""Medusa: shared-feature attention per task and multi-scale attention heads.

Spencer et al., 2022, "Medusa: Universal Feature Learning via Attentional Multitasking"
(CVPR workshops), Sec. 3, as we read it at this scale: the backbone's features at every stage
are shared; each task selects from them with *shared-feature attention* (SFA), a learned
sigmoid mask over the shared feature (channel and spatial), ``a_t^s = sigma(A_t^s(x^s))``,
``u_t^s = a_t^s * x^s``; its *multi-scale attention head* (MSA) then brings every stage's
attended map to the finest stage's resolution and mixes the scales per pixel with softmax
weights, ``f_t = sum_s w_{t,s} P_s(u_t^s)``, ``sum_s w_{t,s} = 1``. The task's decoder reads
``f_t``. ``last_masks`` and ``last_scales`` hold the mean mask per stage and the scale weights
of the last forward (for reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..per_task import PerTaskModel
from .architectures import dense_heads
from .backbones import Backbone, stage_outputs


class MedusaBody(nn.Module):
    def __init__(self, backbone: Backbone, task_names: Sequence[str], width: int) -> None:
        super().__init__()
        self.backbone, self.task_names, self.width = backbone, tuple(task_names), width
        self.sfa = nn.ModuleList(
            nn.ModuleDict({t: nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Sigmoid())
                           for t in task_names})
            for c in backbone.channels)
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in backbone.channels)
        self.scale_gate = nn.ModuleDict({t: nn.Conv2d(width * len(backbone.channels),
                                                      len(backbone.channels), 1)
                                         for t in task_names})
        self.last_masks: dict[str, float] = {}
        self.last_scales: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages = stage_outputs(self.backbone, x)
        size = (int(stages[-1].shape[-2]), int(stages[-1].shape[-1]))
        out = {}
        for t in self.task_names:
            maps = []
            for s, feat in enumerate(stages):
                attention: nn.ModuleDict = self.sfa[s]  # type: ignore[assignment]
                mask = attention[t](feat)
                self.last_masks[f"stage{s + 1}/{t}"] = float(mask.detach().mean())
                u = self.project[s](mask * feat)
                maps.append(F.adaptive_avg_pool2d(u, size) if u.shape[-2:] != size else u)
            w = torch.softmax(self.scale_gate[t](torch.cat(maps, 1)), dim=1)
            self.last_scales[t] = w.detach()
            out[t] = (torch.stack(maps, 1) * w.unsqueeze(2)).sum(1)
        return out


class Medusa(PerTaskModel):
    """Medusa on a backbone's stages (module docstring)."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, *, width: int = 32,
                 head_hidden: int = 32) -> None:
        names = [t.name for t in tasks]
        super().__init__(MedusaBody(backbone, names, width),
                         dense_heads(tasks, width, backbone.stride, head_hidden))
