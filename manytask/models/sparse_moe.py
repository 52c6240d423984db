"""A task-routed sparse mixture-of-experts layer: each task uses its top-k experts only.

Task-level routing as in Kudugunta, Huang, Bapna, Krikun, Lepikhin, Luong and Firat, "Beyond
Distillation: Task-level Mixture-of-Experts for Efficient Inference", Findings of EMNLP 2021
(Section 2: the router's input is the task, not the token), with the top-k gating of Shazeer et
al., "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer",
ICLR 2017 (Section 2.1, eq. 3-5: keep the top ``k`` logits, softmax over them, zero elsewhere;
optional Gaussian noise on the logits while training).

Each task ``t`` has router logits ``l_t`` (one per expert). Its gate is
``softmax(top_k(l_t + noise))``: ``k`` non-zero weights summing to 1. A forward evaluates only
the union of the experts that the present tasks selected; :meth:`TaskRoutedMoE.forward_task`
runs one task's ``k`` experts alone, which is what an inference server for that task pays.
Shared part: input layer, experts and routers; towers are the heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, Routed, check_positive, check_sizes
from .per_task import PerTaskModel, resolve_input, towers


class TaskRoutedLayer(Routed):
    """``n_experts`` experts and one learned top-``k`` router per task."""

    def __init__(
        self,
        input_layer: nn.Module,
        width: int,
        task_names: Sequence[str],
        n_experts: int,
        k: int,
        expert_hidden: Sequence[int],
        noise_std: float,
        dropout: float,
    ) -> None:
        super().__init__()
        if k > n_experts:
            raise ValueError(f"TaskRoutedMoE: k={k} exceeds n_experts={n_experts}")
        self.input_layer = input_layer
        self.task_names = tuple(task_names)
        self.k, self.noise_std = k, noise_std
        self.experts = ExpertSet(n_experts, [width, *expert_hidden], dropout=dropout)
        # Small random logits break ties so that tasks start on different experts.
        self.router = nn.Parameter(torch.randn(len(task_names), n_experts))
        self.last_active: Tensor | None = None  # experts evaluated by the last forward

    def route(self, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Top-k indices ``(T, k)`` and their softmax weights ``(T, k)`` for task rows ``tasks``."""
        logits = self.router[list(tasks)]
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        top, idx = logits.topk(self.k, dim=-1)
        return idx, torch.softmax(top, dim=-1)

    def run(self, h: Tensor, tasks: Sequence[int]) -> Tensor:
        """Features ``(len(tasks), batch, d)`` of tasks ``tasks``, evaluating only their experts."""
        idx, weights = self.route(tasks)
        active, slot = torch.unique(idx, return_inverse=True)  # union of selected experts
        self.last_active = active.detach()
        outputs = self.experts(h, active)  # (U, batch, d)
        dense = weights.new_zeros(len(tasks), active.numel()).scatter(1, slot, weights)
        full = weights.new_zeros(len(tasks), self.experts.n_experts).scatter(1, idx, weights)
        for row, t in enumerate(tasks):
            self.record(self.task_names[t], full[row : row + 1], self.experts.names)
        return torch.einsum("tu,ubd->tbd", dense, outputs)

    def forward(self, x: object) -> dict[str, Tensor]:
        h: Tensor = self.input_layer(x)
        mixed = self.run(h, range(len(self.task_names)))
        return {t: mixed[i] for i, t in enumerate(self.task_names)}


class TaskRoutedMoE(PerTaskModel):
    """Experts shared by all tasks, each task routed to its own top-``k`` of them.

    Args:
        tasks: the tasks; each gets a router and a tower.
        in_features: width of the input tensor (or give ``input_layer``).
        n_experts: number of experts.
        k: experts per task.
        noise_std: standard deviation of the routing noise added while training (0: none);
            noise lets a task try other experts, whose logits otherwise get no gradient.
        expert_hidden, tower_hidden, input_layer, dropout: as in :class:`~manytask.models.MMoE`.

    ``gate_weights[task]`` is ``(1, n_experts)`` with ``k`` non-zero entries summing to 1.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_experts: int = 8,
        k: int = 2,
        noise_std: float = 0.0,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        check_positive("TaskRoutedMoE", n_experts=n_experts, k=k)
        check_sizes("TaskRoutedMoE", "expert_hidden", expert_hidden)
        if not noise_std >= 0:
            raise ValueError(f"TaskRoutedMoE: noise_std must be >= 0, got {noise_std!r}")
        layer, width = resolve_input("TaskRoutedMoE", in_features, input_layer)
        heads = towers("TaskRoutedMoE", tasks, expert_hidden[-1], tower_hidden, dropout)
        body = TaskRoutedLayer(
            layer, width, list(heads), n_experts, k, expert_hidden, noise_std, dropout
        )
        super().__init__(body, heads)

    def forward_task(self, x: object, task: str) -> Tensor:
        """Output of ``task`` alone: runs only that task's ``k`` experts and its tower."""
        if task not in self.heads:
            raise ValueError(f"TaskRoutedMoE: unknown task {task!r}; tasks are {list(self.heads)}")
        body: TaskRoutedLayer = self.shared  # type: ignore[assignment]
        h: Tensor = body.input_layer(x)
        feats = body.run(h, [body.task_names.index(task)])[0]
        out: Tensor = self.heads[task](feats)
        return out

    def selected_experts(self) -> dict[str, list[int]]:
        """Each task's current top-``k`` experts (without routing noise)."""
        body: TaskRoutedLayer = self.shared  # type: ignore[assignment]
        idx = body.router.detach().topk(body.k, dim=-1).indices
        return {t: sorted(idx[i].tolist()) for i, t in enumerate(body.task_names)}
