"""M³ViT: a vision transformer whose mixture-of-experts layers route by task.

Liang et al., NeurIPS 2022, "M³ViT: Mixture-of-Experts Vision Transformer for Efficient
Multi-task Learning with Model-Accelerator Co-design", Sec. 3: a ViT in which every other
block's MLP is a mixture of ``E`` expert MLPs. The router is *task-dependent*: task ``t`` has
its own gate, each token goes to the top-``k`` experts of ``softmax(W_t h)`` (weights
renormalised over the chosen ``k``), and the block's output is the weighted sum of those
experts' outputs. Training runs a forward per task (each with its own routing); at inference
a forward for one task activates only that task's router and only the experts its tokens
chose: the others are never computed (the sparsity the paper co-designs the accelerator for).

Blocks before the first MoE layer do not depend on the task, so they run once per batch; the
dense decoder of each task reads its tokens reshaped to the patch grid (stride = patch size).
:meth:`M3ViT.expert_usage` reports, per MoE layer and task, the fraction of tokens each expert
received in the last forward, like the tabular mixtures' gate reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..per_task import PerTaskModel
from .architectures import dense_heads


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TaskMoE(nn.Module):
    """Top-k mixture of expert MLPs with one router per task."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int,
                 task_names: Sequence[str]) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"M3ViT: top_k must be in [1, {n_experts}], got {top_k}")
        self.experts = nn.ModuleList(_mlp(dim, hidden) for _ in range(n_experts))
        self.routers = nn.ModuleDict({t: nn.Linear(dim, n_experts) for t in task_names})
        self.top_k = top_k
        self.calls = [0] * n_experts  # how often each expert ran (inference sparsity checks)
        self.last_usage: dict[str, Tensor] = {}

    def forward(self, h: Tensor, task: str) -> Tensor:
        tokens = h.reshape(-1, h.shape[-1])
        probs = torch.softmax(self.routers[task](tokens), dim=-1)
        weight, chosen = probs.topk(self.top_k, dim=-1)
        weight = weight / weight.sum(-1, keepdim=True)
        out = torch.zeros_like(tokens)
        usage = torch.zeros(len(self.experts), dtype=torch.float64)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            usage[e] = rows.numel() / tokens.shape[0]
            if rows.numel() == 0:
                continue
            self.calls[e] += 1
            out.index_add_(0, rows, weight[rows, slot, None] * expert(tokens[rows]))
        self.last_usage[task] = usage
        return out.reshape(h.shape)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, moe: TaskMoE | None) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = moe if moe is not None else _mlp(dim, hidden)

    def forward(self, h: Tensor, task: str | None = None) -> Tensor:
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        m = self.norm2(h)
        return h + (self.mlp(m, task) if isinstance(self.mlp, TaskMoE) else self.mlp(m))


class M3ViTBody(nn.Module):
    def __init__(self, task_names: Sequence[str], image_size: int, patch: int, dim: int,
                 depth: int, heads: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"M3ViT: image_size {image_size} is not a multiple of patch {patch}")
        self.task_names, self.grid = tuple(task_names), image_size // patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.position = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, 4 * dim,
                  TaskMoE(dim, 4 * dim, n_experts, top_k, task_names) if i % 2 == 1 else None)
            for i in range(depth))
        self.task: str | None = None  # set: compute only this task (inference)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.embed(x).flatten(2).transpose(1, 2) + self.position
        first_moe = next((i for i, b in enumerate(self.blocks)
                          if isinstance(b.mlp, TaskMoE)), len(self.blocks))
        for block in self.blocks[:first_moe]:
            h = block(h)
        out = {}
        for task in self.task_names if self.task is None else (self.task,):
            t = h
            for block in self.blocks[first_moe:]:
                t = block(t, task)
            out[task] = t.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)
        return out


class M3ViT(PerTaskModel):
    """M³ViT for dense tasks (module docstring). ``only_task(t)`` restricts forwards to one
    task (inference): only its router and the experts it chooses run."""

    def __init__(self, tasks: Sequence[Any], *, image_size: int = 64, patch: int = 8,
                 dim: int = 64, depth: int = 4, heads: int = 4, n_experts: int = 4,
                 top_k: int = 2, head_hidden: int = 32) -> None:
        names = [t.name for t in tasks]
        body = M3ViTBody(names, image_size, patch, dim, depth, heads, n_experts, top_k)
        super().__init__(body, dense_heads(tasks, dim, patch, head_hidden))

    def only_task(self, task: str | None) -> None:
        body: M3ViTBody = self.shared  # type: ignore[assignment]
        if task is not None and task not in body.task_names:
            raise ValueError(f"M3ViT: unknown task {task!r}; tasks: {list(body.task_names)}")
        body.task = task

    def forward(self, x: Any, return_features: bool = False) -> Any:
        feats = self.features(x)
        if not isinstance(feats, dict):
            raise TypeError("M3ViT: features must be a dict of per-task maps")
        outputs = {t: self.heads[t](f) for t, f in feats.items()}
        return (outputs, feats) if return_features else outputs

    def expert_usage(self) -> dict[str, list[float]]:
        out = {}
        for i, module in enumerate(m for m in self.modules() if isinstance(m, TaskMoE)):
            for task, usage in module.last_usage.items():
                out[f"moe{i + 1}/{task}"] = usage.tolist()
        return out
