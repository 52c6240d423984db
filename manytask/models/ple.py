"""Customized Gate Control (CGC) and Progressive Layered Extraction (PLE).

Tang, Liu, Zhao and Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020.

* CGC (Section 4.2, eqs. 2-4): task ``k`` has ``m_k`` experts of its own, all tasks share
  ``m_s`` experts; task ``k``'s gate mixes only its own and the shared experts,
  ``g^k(x) = w^k(x) S^k(x)`` with ``w^k(x) = softmax(W_g^k x)`` and
  ``S^k(x) = [E_(k,1) .. E_(k,m_k), E_(s,1) .. E_(s,m_s)]``; tower ``k`` reads ``g^k(x)``.
* PLE (Section 4.3, eqs. 5-6): CGC blocks stacked in ``N`` extraction levels. At level ``j``
  the experts and gate of task ``k`` read task ``k``'s output of level ``j-1``
  (``g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x)) S^{k,j}(x)``), and a shared gate over *all* experts of the
  level produces the input of the next level's shared experts; the last level has no shared gate.

Shared part: the input layer and every extraction level; ``features(x)`` is ``{task: g^{k,N}}``.
Gate weights sum to 1 over the experts a gate may use (exactly 0 on the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, MaskedGates, Routed, check_positive, check_sizes, mix
from .per_task import PerTaskModel, resolve_input, towers

SHARED = "_shared"  # the group key of the shared experts; no task may use it


class ExtractionLevel(Routed):
    """One level of per-task and shared experts with one gate per output group.

    Expert order: task 0's ``n_task_experts``, task 1's, ..., then the ``n_shared_experts``.
    ``task_scope="own"`` lets task ``k``'s gate use its own and the shared experts (CGC/PLE);
    ``"all"`` lets it use every expert (AdaTT). ``native_residual`` adds AdaTT's linear
    combination of the task's own experts. ``shared_output`` adds the shared gate (over all
    experts) whose output feeds the next level's shared experts.

    ``forward`` takes one ``(batch, in)`` tensor (first level: every group reads it) or
    ``{group: (batch, in)}`` and returns ``{group: (batch, out)}``.
    """

    def __init__(
        self,
        name: str,
        task_names: Sequence[str],
        in_features: int,
        n_task_experts: int,
        n_shared_experts: int,
        expert_hidden: Sequence[int],
        *,
        task_scope: Literal["own", "all"] = "own",
        shared_output: bool = False,
        native_residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = f"ExtractionLevel {name!r}"
        if SHARED in task_names:
            raise ValueError(f"{owner}: no task may be named {SHARED!r}")
        if n_task_experts < 0 or n_shared_experts < 0:
            raise ValueError(f"{owner}: expert counts must be >= 0")
        if n_task_experts + n_shared_experts == 0:
            raise ValueError(f"{owner}: a task's gate needs at least one expert")
        if shared_output and n_shared_experts == 0:
            raise ValueError(f"{owner}: a shared gate needs shared experts")
        if native_residual and n_task_experts == 0:
            raise ValueError(f"{owner}: the native-expert residual needs task experts")
        self.name = name
        self.task_names = tuple(task_names)
        k, m, s = len(task_names), n_task_experts, n_shared_experts
        self.n_task_experts = m
        self.groups = self.task_names + ((SHARED,) if s else ())
        self.experts = ExpertSet(k * m + s, [in_features, *expert_hidden], dropout=dropout)
        self.experts.names = tuple(
            [f"{name}/{t}/{i}" for t in task_names for i in range(m)]
            + [f"{name}/shared/{i}" for i in range(s)]
        )
        shared_idx = list(range(k * m, k * m + s))
        allowed: dict[str, list[int]] = {}
        for i, t in enumerate(task_names):
            own = list(range(i * m, (i + 1) * m))
            allowed[t] = own + shared_idx if task_scope == "own" else list(range(k * m + s))
        if shared_output:
            allowed[SHARED] = list(range(k * m + s))
        self.gates = MaskedGates(in_features, k * m + s, allowed)
        # Which group's input each expert reads (used from the second level on).
        group_of = [i for i in range(k) for _ in range(m)] + [k] * s
        self.register_buffer("expert_group", torch.tensor(group_of, dtype=torch.long))
        self.native: nn.Parameter | None = None
        if native_residual and m > 1:
            self.native = nn.Parameter(torch.ones(k, m))
        self.native_residual = native_residual

    @property
    def out_features(self) -> int:
        return self.experts.out_features

    def forward(self, inputs: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        names = self.gates.names
        if isinstance(inputs, Tensor):
            experts = self.experts(inputs)
            gate_inputs = [inputs] * len(names)
        else:
            stacked = torch.stack([inputs[g] for g in self.groups])  # (G, batch, in)
            expert_group: Tensor = self.expert_group  # type: ignore[assignment]
            experts = self.experts(stacked.index_select(0, expert_group))
            gate_inputs = [inputs[g] for g in names]
        weights = self.gates(gate_inputs)  # (gates, batch, E)
        mixed = mix(weights, experts)
        if self.native_residual:
            k, m = len(self.task_names), self.n_task_experts
            own = experts[: k * m].view(k, m, *experts.shape[1:])
            residual = (
                own.sum(1)
                if self.native is None
                else torch.einsum("km,kmbd->kbd", self.native, own)
            )
            mixed = torch.cat([mixed[:k] + residual, mixed[k:]])
        for i, g in enumerate(names):
            self.record(
                f"{self.name}/{g if g != SHARED else 'shared'}", weights[i], self.experts.names
            )
        return {g: mixed[i] for i, g in enumerate(names)}


class LevelStack(nn.Module):
    """The input layer followed by extraction levels; returns the last level's task outputs."""

    def __init__(self, input_layer: nn.Module, levels: Sequence[ExtractionLevel]) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.levels = nn.ModuleList(levels)
        self.task_names = levels[-1].task_names

    def forward(self, x: object) -> dict[str, Tensor]:
        h: Tensor | dict[str, Tensor] = self.input_layer(x)
        for level in self.levels:
            h = level(h)
        out = cast(dict[str, Tensor], h)  # every level returns a dict
        return {t: out[t] for t in self.task_names}


class PLE(PerTaskModel):
    """Progressive Layered Extraction (Tang et al., 2020, Section 4.3); ``n_levels=1`` is CGC.

    Args:
        tasks: the tasks; each gets its own experts, gates and a tower.
        in_features: width of the input tensor (or give ``input_layer``).
        n_levels: number of extraction levels ``N``.
        n_task_experts: ``m_k``, experts of each task at each level.
        n_shared_experts: ``m_s``, shared experts at each level.
        expert_hidden: widths of each expert MLP; the last one is the feature width.
        tower_hidden: hidden widths of each task tower.
        input_layer: a module applied first, exposing ``out_features`` (part of the shared body).
        dropout: dropout inside experts and towers.

    ``gate_weights`` holds ``"level{j}/{task}"`` and ``"level{j}/shared"`` gates.
    """

    task_scope: Literal["own", "all"] = "own"
    native_residual = False

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_levels: int = 2,
        n_task_experts: int = 1,
        n_shared_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, n_levels=n_levels)
        check_sizes(owner, "expert_hidden", expert_hidden)
        for arg, value in (
            ("n_task_experts", n_task_experts),
            ("n_shared_experts", n_shared_experts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{owner}: {arg} must be a non-negative integer, got {value!r}")
        if n_task_experts + n_shared_experts == 0:
            raise ValueError(f"{owner}: needs at least one expert per level")
        layer, width = resolve_input(owner, in_features, input_layer)
        heads = towers(owner, tasks, expert_hidden[-1], tower_hidden, dropout)
        levels = []
        for j in range(n_levels):
            last = j == n_levels - 1
            levels.append(
                ExtractionLevel(
                    f"level{j + 1}",
                    list(heads),
                    width if j == 0 else expert_hidden[-1],
                    n_task_experts,
                    n_shared_experts,
                    expert_hidden,
                    task_scope=self.task_scope,
                    shared_output=not last and n_shared_experts > 0,
                    native_residual=self.native_residual,
                    dropout=dropout,
                )
            )
        super().__init__(LevelStack(layer, levels), heads)


class CGC(PLE):
    """Customized Gate Control (Tang et al., 2020, Section 4.2): a single-level :class:`PLE`."""

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_task_experts: int = 1,
        n_shared_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            tasks,
            in_features,
            n_levels=1,
            n_task_experts=n_task_experts,
            n_shared_experts=n_shared_experts,
            expert_hidden=expert_hidden,
            tower_hidden=tower_hidden,
            input_layer=input_layer,
            dropout=dropout,
        )
