"""Learning to Branch: a tree of task branches learned with Gumbel-softmax parent choices.

Guo, Lee and Ulbricht, ICML 2020, "Learning to Branch for Multi-Task Learning", Sec. 3: the
network is a stack of layers, layer ``l`` holding ``N_l`` nodes (copies of the backbone's
``l``-th stage) and the last layer one node per task. Each node ``i`` of layer ``l >= 1``
chooses one parent among the ``N_{l-1}`` nodes below through a categorical distribution with
logits ``alpha_i^l``, relaxed with Gumbel-softmax so it is learned jointly with the weights:

    z_i^l = GumbelSoftmax(alpha_i^l, tau),     x_i^l = block_i^l( sum_j z_{ij}^l x_j^{l-1} ).

In training the sample is hard (one-hot) in the forward and soft in the backward (the
straight-through estimator); in evaluation each node reads its most probable parent, so the
network is a tree whose branch points the data chose (:meth:`LearnToBranch.tree`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..per_task import PerTaskModel
from .architectures import dense_heads
from .backbones import Backbone


class BranchingBody(nn.Module):
    def __init__(self, backbone: Backbone, task_names: Sequence[str], widths: Sequence[int],
                 temperature: float) -> None:
        super().__init__()
        depth = len(backbone.blocks)
        if len(widths) != depth - 1:
            raise ValueError(f"LearnToBranch: {depth} stages need {depth - 1} widths (nodes per "
                             f"stage below the task layer), got {list(widths)}")
        self.task_names = tuple(task_names)
        counts = [*widths, len(task_names)]
        self.nodes = nn.ModuleList(
            nn.ModuleList(copy.deepcopy(backbone.blocks[level]) for _ in range(n))
            for level, n in enumerate(counts))
        self.logits = nn.ParameterList(
            nn.Parameter(torch.zeros(counts[level], counts[level - 1]))
            for level in range(1, depth))
        self.temperature = temperature

    def choices(self, level: int) -> Tensor:
        logits = self.logits[level - 1]
        if self.training:
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        first: nn.ModuleList = self.nodes[0]  # type: ignore[assignment]
        outs = torch.stack([node(x) for node in first])
        for level in range(1, len(self.nodes)):
            z = self.choices(level)                       # (children, parents)
            inputs = torch.einsum("cp,p...->c...", z, outs)
            layer: nn.ModuleList = self.nodes[level]  # type: ignore[assignment]
            outs = torch.stack([node(inp) for node, inp in zip(layer, inputs, strict=True)])
        return dict(zip(self.task_names, outs.unbind(0), strict=True))


class LearnToBranch(PerTaskModel):
    """Learning to Branch on a backbone's stages; ``widths[l]`` nodes at stage ``l`` (the last
    stage has one node per task)."""

    def __init__(self, tasks: Sequence[Any], backbone: Backbone, widths: Sequence[int], *,
                 temperature: float = 1.0, head_hidden: int = 32) -> None:
        names = [t.name for t in tasks]
        super().__init__(BranchingBody(backbone, names, widths, temperature),
                         dense_heads(tasks, backbone.channels[-1], backbone.stride, head_hidden))

    def tree(self) -> list[list[int]]:
        """For each stage above the first, the parent each node reads (most probable)."""
        body: BranchingBody = self.shared  # type: ignore[assignment]
        return [logits.argmax(-1).tolist() for logits in body.logits]
