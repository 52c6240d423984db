"""DSelect-k: a differentiable, sparse gate for multi-task mixtures of experts.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong and Chi, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS 2021, Section 3:

* smooth step ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2``, else
  ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2``;
* a single-expert selector with ``m = ceil(log2 n)`` binary digits ``z``:
  ``r(z)_i = prod_j [S(z_j) if bit j of i is 1 else 1 - S(z_j)]`` (a distribution over the
  ``2^m`` codes that becomes one-hot when every ``S(z_j)`` reaches 0 or 1);
* the gate combines ``k`` selectors: ``q = sum_i softmax(alpha)_i r(z^(i))``; in the
  per-example form used for multi-task learning, ``z^(i) = W_i x`` and ``alpha = A x``;
* an entropy regulariser ``lambda * H(r(z^(i)))`` pushes selectors to binary choices (we
  average the entropy over samples, tasks and selectors, so ``lambda`` does not scale with them).

When ``n`` is not a power of two, codes ``>= n`` name no expert; we drop them and renormalise
``q`` over the ``n`` experts (our choice; the gate still sums to 1 and stays exactly sparse once
the selectors are binary). Shared part: input layer, experts and gates; towers are the heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import ExpertSet, Routed, check_positive, check_sizes, mix
from .per_task import PerTaskModel, resolve_input, towers


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth step of DSelect-k (0 below ``-gamma/2``, 1 above ``gamma/2``)."""
    inner = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(
        t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner)
    )


class DSelectGates(nn.Module):
    """The per-example DSelect-k gates of several tasks, computed together.

    ``forward(x)`` returns the gates ``(T, batch, n_experts)`` (each summing to 1) and the mean
    selector entropy (for the regulariser).
    """

    def __init__(
        self, in_features: int, n_gates: int, n_experts: int, k: int, gamma: float
    ) -> None:
        super().__init__()
        self.n_gates, self.n_experts, self.k, self.gamma = n_gates, n_experts, k, gamma
        self.n_bits = max(1, math.ceil(math.log2(n_experts)))
        self.z = nn.Linear(in_features, n_gates * k * self.n_bits)
        self.alpha = nn.Linear(in_features, n_gates * k)
        # Start every S(z_j) inside (0, 1), where the smooth step has a gradient.
        nn.init.uniform_(
            self.z.weight,
            -0.1 * gamma / math.sqrt(in_features),
            0.1 * gamma / math.sqrt(in_features),
        )
        nn.init.uniform_(self.z.bias, -gamma / 4, gamma / 4)
        codes = torch.arange(2**self.n_bits)
        bits = (codes[:, None] >> torch.arange(self.n_bits)) & 1  # (2^m, m), bit j of code i
        self.register_buffer("bits", bits.float())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        s = smooth_step(self.z(x).view(b, self.n_gates, self.k, 1, self.n_bits), self.gamma)
        bits: Tensor = self.bits  # type: ignore[assignment]
        r = torch.where(bits.bool(), s, 1.0 - s).prod(-1)  # (b, T, k, 2^m)
        entropy = -(r * torch.log(r.clamp_min(1e-12))).sum(-1).mean()
        a = torch.softmax(self.alpha(x).view(b, self.n_gates, self.k), dim=-1)
        q = torch.einsum("btk,btkc->btc", a, r)[..., : self.n_experts]
        q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
        return q.transpose(0, 1), entropy


class DSelectBody(Routed):
    def __init__(
        self,
        input_layer: nn.Module,
        width: int,
        task_names: Sequence[str],
        n_experts: int,
        expert_hidden: Sequence[int],
        k: int,
        gamma: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.task_names = tuple(task_names)
        self.experts = ExpertSet(n_experts, [width, *expert_hidden], dropout=dropout)
        self.gates = DSelectGates(width, len(task_names), n_experts, k, gamma)
        self.entropy: Tensor | None = None

    def forward(self, x: object) -> dict[str, Tensor]:
        h: Tensor = self.input_layer(x)
        weights, self.entropy = self.gates(h)
        mixed = mix(weights, self.experts(h))
        for i, t in enumerate(self.task_names):
            self.record(t, weights[i], self.experts.names)
        return {t: mixed[i] for i, t in enumerate(self.task_names)}


class DSelectK(PerTaskModel):
    """Multi-task mixture of experts with per-task DSelect-k gates (Hazimeh et al., 2021).

    Args:
        tasks: the tasks; each gets a DSelect-k gate and a tower.
        in_features: width of the input tensor (or give ``input_layer``).
        n_experts: number of shared experts.
        k: number of selectors per gate (at most ``k`` experts per task once converged).
        gamma: width of the smooth step's transition region.
        entropy_weight: ``lambda`` of the entropy regulariser, see :meth:`regularization`.
        expert_hidden, tower_hidden, input_layer, dropout: as in :class:`~manytask.models.MMoE`.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        n_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        entropy_weight: float = 1e-3,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        check_positive("DSelectK", n_experts=n_experts, k=k)
        check_sizes("DSelectK", "expert_hidden", expert_hidden)
        if not gamma > 0 or not entropy_weight >= 0:
            raise ValueError(
                f"DSelectK: need gamma > 0 and entropy_weight >= 0, got {gamma}, {entropy_weight}"
            )
        layer, width = resolve_input("DSelectK", in_features, input_layer)
        heads = towers("DSelectK", tasks, expert_hidden[-1], tower_hidden, dropout)
        body = DSelectBody(layer, width, list(heads), n_experts, expert_hidden, k, gamma, dropout)
        super().__init__(body, heads)
        self.entropy_weight = entropy_weight

    def regularization(self) -> Tensor:
        """``lambda`` times the mean selector entropy of the last forward (add it to a loss)."""
        body: DSelectBody = self.shared  # type: ignore[assignment]
        if body.entropy is None:
            raise RuntimeError("DSelectK.regularization() needs a forward pass first")
        return self.entropy_weight * body.entropy
