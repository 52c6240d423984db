"""One-gate and multi-gate mixtures of experts (OMoE, MMoE).

Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018, Section 4 ("Modeling approaches"): the one-gate MoE
layer ``y = sum_i g(x)_i f_i(x)`` with ``g(x) = softmax(W_g x)`` (Section 4.1), and the
multi-gate MMoE ``y_k = h^k(f^k(x))``, ``f^k(x) = sum_i g^k(x)_i f_i(x)``,
``g^k(x) = softmax(W_gk x)`` (Section 4.2), where ``f_i`` are the experts and ``h^k`` the towers.

Shared part: the input layer, the experts and the gates (everything below the towers);
``features(x)`` is ``{task: f^k(x)}``. Gate weights sum to 1 over the experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, Routed, check_positive, check_sizes, mix
from .per_task import PerTaskModel, resolve_input, towers


class MixtureBody(Routed):
    """Input layer, ``n_experts`` experts and one softmax gate per task (or one for all)."""

    def __init__(
        self,
        input_layer: nn.Module,
        width: int,
        task_names: Sequence[str],
        n_experts: int,
        expert_hidden: Sequence[int],
        *,
        one_gate: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.task_names = tuple(task_names)
        self.gate_names = ("shared",) if one_gate else self.task_names
        self.experts = ExpertSet(n_experts, [width, *expert_hidden], dropout=dropout)
        # All gates in one GEMM: W_g of every gate stacked along the output axis.
        self.gates = nn.Linear(width, len(self.gate_names) * n_experts)

    def forward(self, x: object) -> dict[str, Tensor]:
        h: Tensor = self.input_layer(x)
        experts = self.experts(h)  # (E, batch, d)
        n_gates, n_experts = len(self.gate_names), self.experts.n_experts
        logits = self.gates(h).view(h.shape[0], n_gates, n_experts).transpose(0, 1)
        weights = torch.softmax(logits, dim=-1)  # (G, batch, E)
        mixed = mix(weights, experts)  # (G, batch, d)
        for i, gate in enumerate(self.gate_names):
            self.record(gate, weights[i], self.experts.names)
        if n_gates == 1:
            return {t: mixed[0] for t in self.task_names}
        return {t: mixed[i] for i, t in enumerate(self.task_names)}


class MMoE(PerTaskModel):
    """Multi-gate mixture of experts (Ma et al., 2018, Section 4.2).

    Args:
        tasks: the tasks; each gets a gate and a tower ending in ``task.out_features`` outputs.
        in_features: width of the input tensor (or give ``input_layer``).
        n_experts: number of experts, shared by all tasks.
        expert_hidden: widths of each expert MLP; the last one is the feature width.
        tower_hidden: hidden widths of each task tower.
        input_layer: a module applied first (e.g. :class:`manytask.data.tabular.TabularInput`),
            exposing ``out_features``; it is part of the shared body.
        dropout: dropout inside experts and towers.

    After each forward, ``gate_weights[task]`` is that task's ``(batch, n_experts)`` gate; its
    columns are the experts ``expert/0 ... expert/{n_experts - 1}``.
    """

    one_gate = False

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_experts: int = 8,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, n_experts=n_experts)
        check_sizes(owner, "expert_hidden", expert_hidden)
        layer, width = resolve_input(owner, in_features, input_layer)
        heads = towers(owner, tasks, expert_hidden[-1], tower_hidden, dropout)
        body = MixtureBody(
            layer,
            width,
            list(heads),
            n_experts,
            expert_hidden,
            one_gate=self.one_gate,
            dropout=dropout,
        )
        super().__init__(body, heads)


class OMoE(MMoE):
    """One-gate mixture of experts (Ma et al., 2018, Section 4.1): every task reads the same
    mixture ``sum_i g(x)_i f_i(x)``; only the towers differ. Its single gate is named
    ``"shared"`` in :attr:`gate_weights`."""

    one_gate = True
