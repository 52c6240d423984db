"""DTRN: task-specific bottom representations below an MMoE or PLE top.

Liu, Zhou, Jiang, Ge and Lian, "Deep Task-specific Bottom Representation Network
for Multi-Task Recommendation", CIKM 2023 (arXiv:2308.05996). Its two bottom modules, as we
read the paper's description (its exact equations could not be checked offline):

* **Task-specific Interest Module (TIM)**: a parameter-efficient *hypernetwork* turns a
  learned task embedding ``c_k`` into task ``k``'s interest extractor: a query
  ``q_k = H_q(c_k)`` and a rank-``r`` modulation of a shared projection,
  ``W_k v = W_0 v + U diag(H_s(c_k)) V v``. The extractor is attention pooling,
  ``i_k = sum_j softmax_j((q_k + W_c mean(E)) . W_k e_j / sqrt(d)) W_k e_j``.
  **Behaviour sequences are absent here**: the paper pools over a user's behaviour sequences
  (one extractor per task and behaviour type); tabular inputs have none, so the extractor pools
  over the sample's own feature-field embeddings ``e_1 .. e_F`` instead, with a context query
  (the mean field embedding) standing in for the target item.
* **Task-specific Representation Refinement Module (TRM)**: a per-task SENet-like re-weighting
  of each feature's embedding, ``a_k = sigmoid(W_{2,k} ReLU(W_{1,k} z))`` with the squeeze
  ``z_j = v_j . e_j`` (a learned vector per field, shared by the tasks; SENet's mean over
  channels would be constant on the LayerNorm-ed dense-feature tokens), giving ``a_{k,j} e_j``.

Task ``k``'s bottom representation is ``r_k = [flatten_j(a_{k,j} e_j), i_k]``; the shared
experts read ``r_s = [flatten_j(e_j), mean_k i_k]``. On top: ``top="mmoe"`` (the MMoE experts,
:class:`~manytask.models.experts.ExpertSet`, run on every task's own representation, and task
``k``'s gate reads ``r_k``), or ``top="ple"`` (the PLE extraction levels of
:mod:`manytask.models.ple`, whose first level's task experts and gates read ``r_k`` and shared
experts ``r_s``). Shared part: everything below the towers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, MaskedGates, Routed, check_positive, check_sizes
from .multitab import FieldTokenizer
from .per_task import PerTaskModel, towers
from .ple import SHARED, ExtractionLevel


class TaskInterest(nn.Module):
    """TIM: hypernetwork-generated attention-pooling extractors, one per task."""

    def __init__(self, n_tasks: int, dim: int, task_dim: int, rank: int) -> None:
        super().__init__()
        check_positive("TaskInterest", task_dim=task_dim, rank=rank)
        self.task_embedding = nn.Parameter(torch.randn(n_tasks, task_dim))
        self.hyper_query = nn.Linear(task_dim, dim)  # H_q
        self.hyper_scale = nn.Linear(task_dim, rank)  # H_s
        self.base = nn.Linear(dim, dim)  # W_0
        self.down = nn.Linear(dim, rank, bias=False)  # V
        self.up = nn.Linear(rank, dim, bias=False)  # U
        self.context = nn.Linear(dim, dim, bias=False)  # W_c

    def forward(self, fields: Tensor) -> Tensor:
        """``fields (batch, F, d)`` -> interests ``(K, batch, d)``."""
        d = fields.shape[-1]
        scale = self.hyper_scale(self.task_embedding)  # (K, r)
        low = self.down(fields)  # (batch, F, r)
        values = self.base(fields).unsqueeze(0) + self.up(low.unsqueeze(0) * scale[:, None, None])
        queries = self.hyper_query(self.task_embedding)[:, None] + self.context(fields.mean(1))
        scores = torch.einsum("kbd,kbfd->kbf", queries, values) / math.sqrt(d)
        return torch.einsum("kbf,kbfd->kbd", torch.softmax(scores, dim=-1), values)


class TaskRefinement(nn.Module):
    """TRM: per-task SENet re-weighting of every field embedding, batched over tasks."""

    def __init__(self, n_tasks: int, n_fields: int, dim: int, ratio: int) -> None:
        super().__init__()
        check_positive("TaskRefinement", ratio=ratio)
        hidden = max(4, -(-n_fields // ratio))  # at least 4 units: fewer die together (ReLU)
        self.project = nn.Parameter(torch.empty(n_fields, dim).uniform_(-1, 1) / math.sqrt(dim))
        b1, b2 = 1.0 / math.sqrt(n_fields), 1.0 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(n_tasks, n_fields, hidden).uniform_(-b1, b1))
        self.b1 = nn.Parameter(torch.zeros(n_tasks, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_tasks, hidden, n_fields).uniform_(-b2, b2))
        self.b2 = nn.Parameter(torch.zeros(n_tasks, 1, n_fields))
        self.last_weights: Tensor | None = None  # (K, batch, F), detached

    def forward(self, fields: Tensor) -> Tensor:
        """``fields (batch, F, d)`` -> re-weighted fields ``(K, batch, F, d)``."""
        z = (fields * self.project).sum(-1)  # squeeze: (batch, F)
        hidden = torch.relu(torch.einsum("bf,kfh->kbh", z, self.w1) + self.b1)
        weights = torch.sigmoid(torch.einsum("kbh,khf->kbf", hidden, self.w2) + self.b2)
        self.last_weights = weights.detach()
        return weights.unsqueeze(-1) * fields.unsqueeze(0)


class TaskInputMixture(Routed):
    """MMoE over task-specific inputs: shared experts run on each task's own representation,
    and task ``k``'s softmax gate (reading ``r_k``) mixes the experts' outputs on ``r_k``."""

    def __init__(
        self, task_names: Sequence[str], in_features: int, n_experts: int, hidden: Sequence[int]
    ) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.experts = ExpertSet(n_experts, [in_features, *hidden])
        self.gates = MaskedGates(in_features, n_experts, {t: range(n_experts) for t in task_names})

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        stacked = torch.stack([inputs[t] for t in self.task_names])  # (K, batch, in)
        k, b, _ = stacked.shape
        # Fold tasks into the batch: one GEMM per layer evaluates every expert on every r_k.
        experts = self.experts(stacked.reshape(k * b, -1)).view(-1, k, b, self.experts.out_features)
        weights = self.gates([inputs[t] for t in self.task_names])  # (K, batch, E)
        mixed = torch.einsum("kbe,ekbd->kbd", weights, experts)
        for i, t in enumerate(self.task_names):
            self.record(t, weights[i], self.experts.names)
        return {t: mixed[i] for i, t in enumerate(self.task_names)}


class DTRNBody(nn.Module):
    """Tokenizer -> TIM and TRM -> task-specific representations -> MMoE or PLE top."""

    def __init__(
        self,
        tokenizer: FieldTokenizer,
        task_names: Sequence[str],
        top: nn.Module,
        task_dim: int,
        rank: int,
        se_ratio: int,
    ) -> None:
        super().__init__()
        d, f, k = tokenizer.d_token, tokenizer.n_fields, len(task_names)
        self.tokenizer = tokenizer
        self.task_names = tuple(task_names)
        self.interest = TaskInterest(k, d, task_dim, rank)
        self.refinement = TaskRefinement(k, f, d, se_ratio)
        self.top = top

    def representations(self, x: object) -> dict[str, Tensor]:
        """``{task: r_k}`` and ``{"_shared": r_s}``, each ``(batch, F * d + d)``."""
        fields = self.tokenizer(x)
        b = fields.shape[0]
        interests = self.interest(fields)  # (K, batch, d)
        refined = self.refinement(fields).flatten(2)  # (K, batch, F * d)
        reps = torch.cat([refined, interests], dim=-1)
        out = {t: reps[i] for i, t in enumerate(self.task_names)}
        out[SHARED] = torch.cat([fields.reshape(b, -1), interests.mean(0)], dim=-1)
        return out

    def forward(self, x: object) -> dict[str, Tensor]:
        h: dict[str, Tensor] = self.representations(x)
        if isinstance(self.top, TaskInputMixture):
            return self.top(h)
        levels: nn.ModuleList = self.top  # type: ignore[assignment]  # the PLE top
        for level in levels:
            h = level(h)
        return {t: h[t] for t in self.task_names}


class DTRN(PerTaskModel):
    """Deep Task-specific Bottom Representation Network (Liu et al., CIKM 2023).

    Args:
        tasks: the tasks.
        in_features: number of dense features of a ``(batch, in_features)`` tensor input.
        input_layer: a :class:`~manytask.data.tabular.TabularInput` for categorical + dense
            inputs; its tables embed the categorical columns.
        d_field: width of every field embedding.
        top: ``"mmoe"`` or ``"ple"``.
        n_experts: experts of the MMoE top.
        n_levels, n_task_experts, n_shared_experts: the PLE top's levels and experts.
        expert_hidden: widths of each expert MLP; the last one is the feature width.
        task_dim: width of the task embeddings fed to the hypernetwork.
        rank: rank of the hypernetwork's modulation of the extractor projection.
        se_ratio: reduction ratio of the per-task SENet.
        tower_hidden: hidden widths of each task tower.
        dropout: dropout in the towers.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        input_layer: nn.Module | None = None,
        d_field: int = 8,
        top: Literal["mmoe", "ple"] = "mmoe",
        n_experts: int = 4,
        n_levels: int = 1,
        n_task_experts: int = 1,
        n_shared_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
        task_dim: int = 8,
        rank: int = 4,
        se_ratio: int = 2,
        tower_hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_sizes(owner, "expert_hidden", expert_hidden)
        check_positive(owner, n_experts=n_experts, n_levels=n_levels)
        tokenizer = FieldTokenizer(owner, d_field, in_features, input_layer)
        heads = towers(owner, tasks, expert_hidden[-1], tower_hidden, dropout)
        names = list(heads)
        width = tokenizer.n_fields * d_field + d_field
        top_module: nn.Module
        if top == "mmoe":
            top_module = TaskInputMixture(names, width, n_experts, expert_hidden)
        elif top == "ple":
            if n_shared_experts < 1:
                raise ValueError(f"{owner}: the PLE top needs n_shared_experts >= 1 (r_s)")
            top_module = nn.ModuleList(
                ExtractionLevel(
                    f"level{j + 1}",
                    names,
                    width if j == 0 else expert_hidden[-1],
                    n_task_experts,
                    n_shared_experts,
                    expert_hidden,
                    shared_output=j < n_levels - 1,
                )
                for j in range(n_levels)
            )
        else:
            raise ValueError(f"{owner}: top must be 'mmoe' or 'ple', got {top!r}")
        body = DTRNBody(tokenizer, names, top_module, task_dim, rank, se_ratio)
        super().__init__(body, heads)
