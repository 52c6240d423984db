"""TaskExpert: experts that decompose the backbone feature, per-pixel task gates, and a
multi-task feature memory.

Ye and Xu, ICCV 2023, "TaskExpert: Dynamically Assembling Multi-Task Representations with
Memorial Mixture-of-Experts", Sec. 3: at each of ``L`` backbone stages the stage's feature
``x^l`` is decomposed by ``N`` expert networks ``E_n`` (shared by all tasks) into
``e_n^l = E_n(x^l)``; a task-specific gate reads the task's *feature memory* and gives, per
pixel, softmax weights over the experts; the task's feature is their combination and updates
the memory:

    g_t^l = softmax_n( G_t^l([x^l ; m_t^{l-1}]) ),      f_t^l = sum_n g_{t,n}^l e_n^l,
    m_t^l = m_t^{l-1} + f_t^l                                          (memory update)

(``m_t^0 = 0``; each stage's maps are resized to the last stage's resolution). The task's
decoder reads ``m_t^L``. Gates sum to one at every pixel (recorded in ``last_gates`` and
averaged per expert by :meth:`TaskExpert.expert_usage`, as the tabular mixtures report).

Our reading where the paper leaves room at this scale: experts are 1x1 conv + BN + ReLU to
``width`` channels, gates a 1x1 conv over the concatenated stage feature and memory.
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


class TaskExpertBody(nn.Module):
    def __init__(self, backbone: Backbone, task_names: Sequence[str], n_experts: int,
                 width: int) -> None:
        super().__init__()
        self.backbone, self.task_names, self.width = backbone, tuple(task_names), width
        self.experts = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU())
                          for _ in range(n_experts))
            for c in backbone.channels)
        self.gates = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(c + width, n_experts, 1) for t in task_names})
            for c in backbone.channels)
        self.last_gates: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages = stage_outputs(self.backbone, x)
        h = stages[-1]
        size = (int(stages[-1].shape[-2]), int(stages[-1].shape[-1]))
        memory = {t: torch.zeros(x.shape[0], self.width, *size, dtype=h.dtype, device=h.device)
                  for t in self.task_names}
        for level, feat in enumerate(stages):
            feat = F.adaptive_avg_pool2d(feat, size) if feat.shape[-2:] != size else feat
            experts: nn.ModuleList = self.experts[level]  # type: ignore[assignment]
            decomposed = torch.stack([e(feat) for e in experts], 1)  # (B, N, width, h, w)
            gates: nn.ModuleDict = self.gates[level]  # type: ignore[assignment]
            for t in self.task_names:
                g = torch.softmax(gates[t](torch.cat([feat, memory[t]], 1)), dim=1)
                self.last_gates[f"level{level + 1}/{t}"] = g.detach()
                memory[t] = memory[t] + (g.unsqueeze(2) * decomposed).sum(1)
        return memory


class TaskExpert(PerTaskModel):
    """TaskExpert on a backbone's stages (module docstring)."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, *, n_experts: int = 4,
                 width: int = 32, head_hidden: int = 32) -> None:
        if n_experts < 1 or width < 1:
            raise ValueError(f"TaskExpert: n_experts and width must be >= 1, got {n_experts}, "
                             f"{width}")
        names = [t.name for t in tasks]
        super().__init__(TaskExpertBody(backbone, names, n_experts, width),
                         dense_heads(tasks, width, backbone.stride, head_hidden))

    def expert_usage(self) -> dict[str, list[float]]:
        """Mean gate weight of each expert per level and task, from the last forward."""
        body: TaskExpertBody = self.shared  # type: ignore[assignment]
        return {k: g.mean(dim=(0, 2, 3)).tolist() for k, g in body.last_gates.items()}
