"""HoME: a hierarchy of multi-gate experts with normalised experts and feature / self gates.

Wang, Cao, Fu, Gai and Zhou, "HoME: Hierarchy of Multi-Gate Experts for Multi-Task Learning at
Kuaishou", 2024 (arXiv:2408.05430), Section 3. What is implemented, and how we read it:

* **Expert normalisation & Swish**: every expert ends with batch normalisation and a Swish
  (SiLU) activation, ``E(v) = Swish(BN(MLP(v)))``, so that all experts' outputs share one scale
  and no expert dominates (or vanishes from) a softmax mixture.
* **Hierarchy mask**: tasks are grouped into task groups ("meta" categories). The meta level
  has global experts and experts per group; each group's gate mixes its group's and the global
  experts, and a global gate mixes all of them. The task level has experts per task, per group
  and global, reading the meta level's group (or global) output; task ``t``'s gate mixes its own,
  its group's and the global experts, reading its group's representation.
* **Feature gate**: each expert reads its own view of its input,
  ``v * 2 sigmoid(v A_e B_e)`` with a rank-``r`` pair ``A_e, B_e`` (LoRA-style), which is the
  identity at ``A_e B_e = 0`` and can scale each feature in ``(0, 2)``.
* **Self gate**: against the gradient loss of the deeper hierarchy, each task-level unit adds
  its input (its group's meta-level representation ``m``) back through a gate computed from
  that same vector, ``out_t = fused_t + sigmoid(W_t m) * m``. This gated residual is our reading
  of the paper's self-gate (its exact equation could not be checked offline).

Gates are softmaxes summing to 1 over the experts a unit may use (0 elsewhere); self-gate
values are element-wise sigmoids. Shared part: everything below the towers; ``features(x)``
is ``{task: task-level output}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, MaskedGates, Routed, check_sizes, mix
from .per_task import PerTaskModel, resolve_input, towers

Block = tuple[str, int, str]  # (name, number of experts, input group)
Unit = tuple[str, list[str], str]  # (output name, blocks it may use, input group)


class HoMELevel(Routed):
    """One HoME level: feature-gated, normalised experts in named blocks, and fusion units.

    With ``self_gate``, every unit adds its own input back through an element-wise sigmoid
    gate (needs ``in_features`` equal to the expert width).
    """

    def __init__(
        self,
        name: str,
        in_features: int,
        blocks: Sequence[Block],
        units: Sequence[Unit],
        expert_hidden: Sequence[int],
        rank: int,
        dropout: float,
        self_gate: bool = False,
    ) -> None:
        super().__init__()
        if self_gate and in_features != expert_hidden[-1]:
            raise ValueError(f"HoME level {name!r}: a self gate needs in_features == expert width")
        self.name = name
        self.input_groups = tuple(dict.fromkeys(g for _, _, g in blocks))
        span: dict[str, list[int]] = {}
        group_of: list[int] = []
        for block, n, group in blocks:
            span[block] = list(range(len(group_of), len(group_of) + n))
            group_of += [self.input_groups.index(group)] * n
        e = len(group_of)
        self.register_buffer("expert_group", torch.tensor(group_of, dtype=torch.long))
        self.rank = rank
        if rank:  # feature gates, zero-initialised B so every gate starts as the identity
            bound = 1.0 / math.sqrt(in_features)
            self.gate_a = nn.Parameter(torch.empty(e, in_features, rank).uniform_(-bound, bound))
            self.gate_b = nn.Parameter(torch.zeros(e, rank, in_features))
        self.experts = ExpertSet(
            e,
            [in_features, *expert_hidden],
            activation="silu",
            last_activation=False,
            dropout=dropout,
        )
        self.experts.names = tuple(
            f"{name}/{block}/{i}" for block, n, _ in blocks for i in range(n)
        )
        self.norm = nn.BatchNorm1d(e * expert_hidden[-1])
        self.units = tuple(u for u, _, _ in units)
        self.unit_inputs = tuple(g for _, _, g in units)
        self.gates = MaskedGates(
            in_features, e, {u: [i for b in allowed for i in span[b]] for u, allowed, _ in units}
        )
        self.self_gates = (
            nn.ModuleDict({u: nn.Linear(in_features, in_features) for u in self.units})
            if self_gate
            else None
        )

    @property
    def out_features(self) -> int:
        return self.experts.out_features

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        stacked = torch.stack([inputs[g] for g in self.input_groups])
        expert_group: Tensor = self.expert_group  # type: ignore[assignment]
        v = stacked.index_select(0, expert_group)  # (E, batch, in): each expert's input
        if self.rank:
            v = v * 2.0 * torch.sigmoid(torch.bmm(torch.bmm(v, self.gate_a), self.gate_b))
        h = self.experts(v)  # (E, batch, d)
        e, b, d = h.shape
        h = F.silu(self.norm(h.transpose(0, 1).reshape(b, e * d)).view(b, e, d).transpose(0, 1))
        gate_in = [inputs[g] for g in self.unit_inputs]
        weights = self.gates(gate_in)
        mixed = mix(weights, h)
        out = {}
        for i, unit in enumerate(self.units):
            out[unit] = mixed[i]
            if self.self_gates is not None:
                m = gate_in[i]
                out[unit] = out[unit] + torch.sigmoid(self.self_gates[unit](m)) * m
            self.record(f"{self.name}/{unit}", weights[i], self.experts.names)
        return out


class HoMEBody(nn.Module):
    def __init__(
        self, input_layer: nn.Module, meta: HoMELevel, task: HoMELevel, task_names: Sequence[str]
    ) -> None:
        super().__init__()
        self.input_layer, self.meta, self.task = input_layer, meta, task
        self.task_names = tuple(task_names)

    def forward(self, x: object) -> dict[str, Tensor]:
        v: Tensor = self.input_layer(x)
        groups = self.meta({"input": v})
        out = self.task(groups)
        return {t: out[t] for t in self.task_names}


class HoME(PerTaskModel):
    """Hierarchy of multi-gate experts (Wang et al., 2024), two levels: meta and task.

    Args:
        tasks: the tasks.
        in_features: width of the input tensor (or give ``input_layer``).
        task_groups: ``{group: [task names]}``, each task in exactly one group (default: one
            group per task).
        n_global_experts, n_group_experts, n_task_experts: experts per block at each level
            (``n_task_experts`` only at the task level).
        expert_hidden: widths of each expert MLP; the last one is the feature width.
        feature_gate_rank: rank ``r`` of the feature gates (0: no feature gate).
        tower_hidden, input_layer, dropout: as in :class:`~manytask.models.MMoE`.

    ``gate_weights`` holds ``"meta/{group}"``, ``"meta/global"`` and ``"task/{task}"`` gates.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        task_groups: Mapping[str, Sequence[str]] | None = None,
        n_global_experts: int = 1,
        n_group_experts: int = 1,
        n_task_experts: int = 1,
        expert_hidden: Sequence[int] = (64,),
        feature_gate_rank: int = 4,
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        check_sizes("HoME", "expert_hidden", expert_hidden)
        counts = {
            "n_global_experts": n_global_experts,
            "n_group_experts": n_group_experts,
            "n_task_experts": n_task_experts,
            "feature_gate_rank": feature_gate_rank,
        }
        for arg, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"HoME: {arg} must be a non-negative integer, got {value!r}")
        if n_group_experts < 1 or n_task_experts < 1:
            raise ValueError("HoME: each group and each task needs at least one expert")
        layer, width = resolve_input("HoME", in_features, input_layer)
        heads = towers("HoME", tasks, expert_hidden[-1], tower_hidden, dropout)
        groups = (
            {t: [t] for t in heads}
            if task_groups is None
            else {g: list(ts) for g, ts in task_groups.items()}
        )
        listed = [t for ts in groups.values() for t in ts]
        if sorted(listed) != sorted(heads):
            raise ValueError(
                f"HoME: task_groups {groups} must list every task {list(heads)} exactly once"
            )
        if "global" in groups:
            raise ValueError("HoME: 'global' is reserved and cannot name a task group")
        group_of = {t: g for g, ts in groups.items() for t in ts}
        glob = [("global", n_global_experts, "input")] if n_global_experts else []
        meta_blocks: list[Block] = [
            *glob,
            *[(f"group:{g}", n_group_experts, "input") for g in groups],
        ]
        meta_units: list[Unit] = [
            (g, [f"group:{g}", *[b for b, _, _ in glob]], "input") for g in groups
        ]
        task_glob: list[Block] = []
        if n_global_experts:
            meta_units.append(("global", [b for b, _, _ in meta_blocks], "input"))
            task_glob = [("global", n_global_experts, "global")]
        task_blocks: list[Block] = [
            *task_glob,
            *[(f"group:{g}", n_group_experts, g) for g in groups],
            *[(f"task:{t}", n_task_experts, group_of[t]) for t in heads],
        ]
        task_units: list[Unit] = [
            (t, [f"task:{t}", f"group:{group_of[t]}", *[b for b, _, _ in task_glob]], group_of[t])
            for t in heads
        ]
        meta = HoMELevel(
            "meta", width, meta_blocks, meta_units, expert_hidden, feature_gate_rank, dropout
        )
        task = HoMELevel(
            "task",
            expert_hidden[-1],
            task_blocks,
            task_units,
            expert_hidden,
            feature_gate_rank,
            dropout,
            self_gate=True,
        )
        super().__init__(HoMEBody(layer, meta, task, list(heads)), heads)
