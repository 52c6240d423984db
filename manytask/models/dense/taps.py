"""TAPS: task-adaptive parameter sharing with learned per-layer gates.

Wallingford et al., CVPR 2022, "Task Adaptive Parameter Sharing for Multi-Task Learning",
Sec. 3: every convolution keeps its shared weight ``W`` and learns, per task ``t``, a weight
delta ``dW_t`` and a score ``s_t``; task ``t`` uses

    W_t = W + I(s_t >= tau) dW_t                                          (eq. 2)

with the indicator's gradient passed straight through (``d I / d s = 1``), and training adds
the sparsity penalty ``lambda * sum_{t, l} |s_{t,l}|`` (eq. 4) so that few layers adapt.
With every gate closed (all ``s < tau``) each task's network *is* the shared network.

Each task runs its own forward of the backbone (its weights differ once a gate opens), so
``features(x)`` is ``{task: map}`` and a forward costs K backbone passes. Deltas start at
zero and scores at ``init_score`` (above ``tau``: every layer may adapt at first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..per_task import PerTaskModel
from .architectures import dense_heads
from .backbones import Backbone


class TAPSConv2d(nn.Module):
    """A convolution with a shared weight and gated per-task deltas (eq. 2)."""

    def __init__(self, conv: nn.Conv2d, task_names: Sequence[str], tau: float,
                 init_score: float) -> None:
        super().__init__()
        self.conv = conv
        self.tau = tau
        self.deltas = nn.ParameterDict({t: nn.Parameter(torch.zeros_like(conv.weight))
                                        for t in task_names})
        self.scores = nn.ParameterDict({t: nn.Parameter(torch.tensor(float(init_score)))
                                        for t in task_names})
        self.task: str | None = None

    def gate(self, task: str) -> Tensor:
        s = self.scores[task]
        hard = (s >= self.tau).to(s.dtype)
        return hard + s - s.detach()  # straight-through: forward I(s >= tau), backward 1

    def forward(self, x: Tensor) -> Tensor:
        weight = self.conv.weight
        if self.task is not None:
            weight = weight + self.gate(self.task) * self.deltas[self.task]
        c = self.conv
        return F.conv2d(x, weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


class TAPSBody(nn.Module):
    def __init__(self, backbone: Backbone, task_names: Sequence[str], tau: float,
                 init_score: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_names = tuple(task_names)
        self.layers: list[TAPSConv2d] = []
        for name, module in list(backbone.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Conv2d):
                    wrapped = TAPSConv2d(child, task_names, tau, init_score)
                    setattr(module, child_name, wrapped)
                    self.layers.append(wrapped)
            del name

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for task in self.task_names:
            for layer in self.layers:
                layer.task = task
            out[task] = self.backbone(x)
        for layer in self.layers:
            layer.task = None
        return out


class TAPS(PerTaskModel):
    """TAPS on any backbone whose convolutions are ``nn.Conv2d`` (module docstring)."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, *, tau: float = 0.1,
                 init_score: float = 0.5, head_hidden: int = 32) -> None:
        names = [t.name for t in tasks]
        super().__init__(TAPSBody(backbone, names, tau, init_score),
                         dense_heads(tasks, backbone.channels[-1], backbone.stride, head_hidden))

    def sparsity_penalty(self) -> Tensor:
        """``sum_{t, l} |s_{t,l}|`` (eq. 4); add ``lambda *`` it to the training loss."""
        body: TAPSBody = self.shared  # type: ignore[assignment]
        return torch.stack([s.abs() for layer in body.layers for s in layer.scores.values()]).sum()

    def open_gates(self) -> dict[str, float]:
        """Per task, the fraction of layers whose gate is open (for reports)."""
        body: TAPSBody = self.shared  # type: ignore[assignment]
        return {t: sum(float(layer.scores[t].detach()) >= layer.tau for layer in body.layers)
                / len(body.layers) for t in body.task_names}
