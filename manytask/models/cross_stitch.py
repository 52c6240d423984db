"""Cross-stitch networks: one column per task, mixed linearly after every layer.

Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for Multi-task Learning",
CVPR 2016, Section 3.2 (eq. 1): after each layer the activations of the task columns are
replaced by learned linear combinations, ``x~_A = a_AA x_A + a_AB x_B`` (for ``K`` tasks, a
``K x K`` matrix per layer). Section 3.3: the units are initialised as convex combinations
with weight ``alpha_S`` on the own column and ``alpha_D`` on the others; we use
``alpha_S = 0.9`` and spread ``1 - alpha_S`` evenly over the other columns (rows sum to 1).

The columns are MLP layers evaluated together (one batched product per layer). Shared part:
the input layer, every column and every cross-stitch unit (each column reaches every task
through the units); ``features(x)`` is ``{task: last layer of its column}``; heads are towers.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, check_sizes
from .per_task import PerTaskModel, resolve_input, towers


class CrossStitchBody(nn.Module):
    def __init__(
        self,
        input_layer: nn.Module,
        width: int,
        task_names: Sequence[str],
        hidden: Sequence[int],
        alpha_same: float,
        dropout: float,
    ) -> None:
        super().__init__()
        k = len(task_names)
        self.input_layer = input_layer
        self.task_names = tuple(task_names)
        sizes = [width, *hidden]
        self.layers = nn.ModuleList(
            ExpertSet(k, [a, b], dropout=dropout, name=f"layer{i}")
            for i, (a, b) in enumerate(pairwise(sizes))
        )
        # Rows are convex combinations; a single task keeps its column unchanged.
        same = alpha_same if k > 1 else 1.0
        off = (1.0 - same) / (k - 1) if k > 1 else 0.0
        init = torch.full((k, k), off) + torch.eye(k) * (same - off)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in self.layers)

    def forward(self, x: object) -> dict[str, Tensor]:
        h: Tensor = self.input_layer(x)
        for layer, alpha in zip(self.layers, self.stitches, strict=True):
            h = torch.einsum("kl,lbd->kbd", alpha, layer(h))  # row k mixes every column into k
        return {t: h[i] for i, t in enumerate(self.task_names)}


class CrossStitch(PerTaskModel):
    """Cross-stitch network over MLP columns (Misra et al., 2016).

    Args:
        tasks: the tasks; each gets a column and a tower.
        in_features: width of the input tensor (or give ``input_layer``).
        hidden: widths of each column's layers; a cross-stitch unit follows every layer.
        tower_hidden: hidden widths of each task tower.
        alpha_same: initial weight of a column on itself (``alpha_S``), in ``[0, 1]``.
        input_layer, dropout: as in :class:`~manytask.models.MMoE`.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        hidden: Sequence[int] = (64, 64),
        tower_hidden: Sequence[int] = (),
        alpha_same: float = 0.9,
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        check_sizes("CrossStitch", "hidden", hidden)
        if not 0.0 <= alpha_same <= 1.0:
            raise ValueError(f"CrossStitch: alpha_same must lie in [0, 1], got {alpha_same!r}")
        layer, width = resolve_input("CrossStitch", in_features, input_layer)
        heads = towers("CrossStitch", tasks, hidden[-1], tower_hidden, dropout)
        super().__init__(
            CrossStitchBody(layer, width, list(heads), hidden, alpha_same, dropout), heads
        )

    @property
    def stitch_weights(self) -> list[Tensor]:
        """The ``K x K`` cross-stitch matrices, one per layer (row ``k``: what task ``k`` reads)."""
        body: CrossStitchBody = self.shared  # type: ignore[assignment]
        return [a.detach().clone() for a in body.stitches]
