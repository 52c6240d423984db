"""LoRA shared by all tasks, one LoRA per task, Align-LoRA and MTL-LoRA."""

from __future__ import annotations

from itertools import combinations
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param
from .base import ADAPTERS, ALPHA, RANK, AdapterMethod, positive_int, task_onehot
from .layer import AdaptedLayer, Context, delta_of, gated_lowrank, in_out, kaiming_rows, masked_mean


class LoraDelta(nn.Module):
    """``(alpha / r) B A x`` (Hu et al., 2022, Eq. 3); A as nn.Linear's weight, B zero."""

    def __init__(self, n_in: int, n_out: int, r: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(kaiming_rows(r, n_in))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))
        self.scale = alpha / r

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        return self.scale * gated_lowrank(x, self.lora_A, self.lora_B, None)


@ADAPTERS.register()
class Lora(AdapterMethod):
    """One LoRA shared by every task (Hu et al., 2022, "LoRA", Eq. 3: ``h = W0 x + (alpha/r)
    B A x``, A (r x in), B (out x r) zero-initialised, W0 frozen)."""

    name = "lora"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return LoraDelta(*in_out(module), self.r, self.alpha)

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        d: Any = layer.delta
        return d.scale * d.lora_B @ d.lora_A


class AlignDelta(LoraDelta):
    """A LoRA that also reports its adapter-space activations ``A x`` (token-averaged)."""

    def __init__(self, n_in: int, n_out: int, r: int, alpha: float, owner: AlignLora) -> None:
        super().__init__(n_in, n_out, r, alpha)
        self.owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        u = x.to(self.lora_A.dtype) @ self.lora_A.t()
        owner = self.owner[0]
        if self.training and owner.align_weight > 0:
            loss = owner.alignment(masked_mean(u, ctx.mask), ctx.tasks)
            ctx.add_loss("align", owner.align_weight * loss / max(len(owner.layers), 1))
        return self.scale * (u @ self.lora_B.t())


def symmetric_kl(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetrised KL divergence of the diagonal Gaussians fitted to rows of ``a`` and ``b``
    (summed over dimensions): ``(KL(Na||Nb) + KL(Nb||Na)) / 2``."""
    mu_a, var_a = a.mean(0), a.var(0) + eps
    mu_b, var_b = b.mean(0), b.var(0) + eps

    def kl(m1: Tensor, v1: Tensor, m2: Tensor, v2: Tensor) -> Tensor:
        return 0.5 * (torch.log(v2 / v1) + v1 / v2 + (m2 - m1) ** 2 / v2 - 1).sum()

    return 0.5 * (kl(mu_a, var_a, mu_b, var_b) + kl(mu_b, var_b, mu_a, var_a))


@ADAPTERS.register()
class AlignLora(AdapterMethod):
    """Align-LoRA (Liu, Cheng, Chang and Wu, 2025, "Align, Don't Divide", Sec. 4): one shared
    LoRA plus ``lambda * L_align``, where ``L_align`` averages over adapted layers and over
    pairs of tasks (s, t) present in the batch the symmetric KL divergence between diagonal
    Gaussians fitted to the tasks' adapter-space representations ``A x`` (their reference
    code's KL variant). Here ``A x`` is averaged over each example's real tokens first, since
    positions do not correspond across sentences. Tasks with fewer than two examples in the
    batch are skipped (no variance). The loss is collected as the model's auxiliary loss."""

    name = "align_lora"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA,
        "align_weight": Param("float", 0.01, "lambda of the alignment loss", low=0)}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0,
                 align_weight: float = 0.01) -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)
        self.align_weight = float(align_weight)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return AlignDelta(*in_out(module), self.r, self.alpha, self)

    def auxiliary_names(self) -> tuple[str, ...]:
        return ("align",) if self.align_weight > 0 else ()

    def alignment(self, reps: Tensor, tasks: Tensor) -> Tensor:
        groups = [reps[tasks == t] for t in torch.unique(tasks).tolist()]
        groups = [g for g in groups if g.shape[0] >= 2]
        pairs = [symmetric_kl(a, b) for a, b in combinations(groups, 2)]
        return torch.stack(pairs).mean() if pairs else reps.sum() * 0

    fold = Lora.fold


class PerTaskDelta(nn.Module):
    """K LoRAs stacked: rows ``k r .. (k+1) r - 1`` of ``task_A`` (and columns of
    ``task_B``) are task k's factors; each example uses its own task's."""

    def __init__(self, n_in: int, n_out: int, r: int, alpha: float, n_tasks: int) -> None:
        super().__init__()
        self.task_A = nn.Parameter(torch.cat([kaiming_rows(r, n_in) for _ in range(n_tasks)]))
        self.task_B = nn.Parameter(torch.zeros(n_out, n_tasks * r))
        self.scale, self.r, self.n_tasks = alpha / r, r, n_tasks

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        gate = task_onehot(ctx.tasks, self.n_tasks, self.r, self.task_A.dtype)
        return self.scale * gated_lowrank(x, self.task_A, self.task_B, gate)

    def factors(self, task: int) -> tuple[Tensor, Tensor]:
        rows = slice(task * self.r, (task + 1) * self.r)
        return self.task_A[rows], self.task_B[:, rows]


@ADAPTERS.register()
class LoraPerTask(AdapterMethod):
    """One LoRA per task (Hu et al., 2022, Eq. 3 for each task k: ``h = W0 x + (alpha/r)
    B_k A_k x`` on the examples of task k); nothing is shared but the frozen base."""

    name = "lora_per_task"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return PerTaskDelta(*in_out(module), self.r, self.alpha, self.n_tasks)

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        a, b = delta_of(layer).factors(task)
        return delta_of(layer).scale * b @ a


class MtlDelta(nn.Module):
    """MTL-LoRA's increment for one layer (see :class:`MtlLora`)."""

    def __init__(self, n_in: int, n_out: int, owner: MtlLora) -> None:
        super().__init__()
        r, n_up, k = owner.r, owner.n_up, owner.n_tasks
        self.lora_A = nn.Parameter(kaiming_rows(r, n_in))
        self.task_lambda = nn.Parameter(torch.eye(r).repeat(k, 1, 1))
        self.lora_B = nn.Parameter(torch.zeros(n_out, n_up * r))  # [B_1 ... B_n]
        self.task_weights = nn.Parameter(torch.zeros(k, n_up))
        self.scale, self.r, self.n_up = owner.alpha / r, r, n_up
        self.temperature = owner.temperature

    def mixing(self, tasks: Tensor) -> Tensor:
        """(B, n_up): softmax(w_t / tau), on the simplex."""
        return torch.softmax(self.task_weights[tasks] / self.temperature, dim=-1)

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        u = x.to(self.lora_A.dtype) @ self.lora_A.t()                      # (B, L, r)
        lam = self.task_lambda[ctx.tasks]                                  # (B, r, r)
        v = u @ lam.transpose(1, 2) if u.dim() == 3 else (lam @ u.unsqueeze(-1)).squeeze(-1)
        w = self.mixing(ctx.tasks)                                         # (B, n_up)
        shape = (w.shape[0],) + (1,) * (v.dim() - 2) + (self.n_up, 1)
        z = (v.unsqueeze(-2) * w.reshape(shape)).flatten(-2)              # (B, L, n_up r)
        return self.scale * (z @ self.lora_B.t())

    def weight(self, task: int) -> Tensor:
        w = self.mixing(torch.tensor([task], device=self.task_weights.device))[0]
        b = (self.lora_B.view(-1, self.n_up, self.r) * w[None, :, None]).sum(1)
        return self.scale * b @ self.task_lambda[task] @ self.lora_A


@ADAPTERS.register()
class MtlLora(AdapterMethod):
    """MTL-LoRA (Yang et al., 2025, "MTL-LoRA: Low-Rank Adaptation for Multi-Task
    Learning", Eq. 4-6): ``h = W0 x + (alpha/r) sum_i softmax(w_t / tau)_i B_i Lambda_t A x``
    with A (r x in) shared, Lambda_t (r x r) task t's transform (identity at start), B_i
    (out x r), i = 1..n_up, shared up-projections (zero at start) and w_t task t's mixing
    logits (zero: uniform at start)."""

    name = "mtl_lora"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA,
        "n_up": Param("int", 3, "number of shared up-projections B_i", low=1),
        "temperature": Param("float", 0.5, "softmax temperature tau", low=0,
                                   low_open=True)}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0, n_up: int = 3,
                 temperature: float = 0.5) -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)
        self.n_up, self.temperature = positive_int(n_up, "n_up", self.name), float(temperature)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return MtlDelta(*in_out(module), self)

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        return delta_of(layer).weight(task)
