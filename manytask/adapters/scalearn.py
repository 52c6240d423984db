"""ScaLearn: learned scaling of frozen source adapters' outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param
from .base import ADAPTERS, ALPHA, RANK, AdapterMethod, positive_int
from .layer import AdaptedLayer, Context, delta_of, gated_lowrank, in_out, kaiming_rows


class ScaLearnDelta(nn.Module):
    """Frozen source LoRAs (buffers ``source_A`` (S r, in), ``source_B`` (out, S r)) and each
    target task's scaling ``task_scale``: (K, S) when uniform, (K, S, out) otherwise."""

    source_A: Tensor
    source_B: Tensor

    def __init__(self, n_in: int, n_out: int, owner: ScaLearn) -> None:
        super().__init__()
        s, r, k = owner.n_sources, owner.r, owner.n_tasks
        self.register_buffer("source_A", torch.cat([kaiming_rows(r, n_in) for _ in range(s)]))
        self.register_buffer("source_B", torch.zeros(n_out, s * r))
        if owner.init == "own":
            if s != k:
                raise ValueError(f"scalearn: init 'own' needs one source per task "
                                 f"(n_sources {s} != {k} tasks); use init 'uniform'")
            start = torch.eye(k)
        else:
            start = torch.full((k, s), 1.0 / s)
        self.task_scale = nn.Parameter(start if owner.uniform else
                                       start[:, :, None].repeat(1, 1, n_out))
        self.scale, self.r, self.s, self.uniform = owner.alpha / r, r, s, owner.uniform

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        omega = self.task_scale[ctx.tasks.long()]
        if self.uniform:  # scalar per source: fold it into the rank gate (one LoRA's cost)
            gate = omega.repeat_interleave(self.r, dim=1)
            return self.scale * gated_lowrank(x, self.source_A, self.source_B, gate)
        u = x.to(self.source_A.dtype) @ self.source_A.t()
        u = u.unflatten(-1, (self.s, self.r))                           # (..., S, r)
        b = self.source_B.view(-1, self.s, self.r)                      # (out, S, r)
        outs = torch.einsum("...sr,osr->...so", u, b)                   # (..., S, out)
        shape = (omega.shape[0],) + (1,) * (outs.dim() - 3) + omega.shape[1:]
        return self.scale * (outs * omega.reshape(shape)).sum(-2)

    def fold_weight(self, task: int) -> Tensor:
        omega = self.task_scale[task]
        b = self.source_B.view(-1, self.s, self.r)
        b = b * (omega[None, :, None] if self.uniform else omega.t()[:, :, None])
        return self.scale * b.reshape(b.shape[0], -1) @ self.source_A


@ADAPTERS.register()
class ScaLearn(AdapterMethod):
    """ScaLearn (Frohmann et al., 2023, "ScaLearn: Simple and Highly Parameter-Efficient
    Task Transfer by Learning to Scale", Eq. 3): the outputs ``o_l^s`` of S frozen source
    adapters at layer l are combined for target task t as ``o_l = sum_s omega_l^{t,s} *
    o_l^s``, with learned scaling vectors omega (one per layer, source and output unit), or
    one scalar per layer and source (``uniform``, ScaLearnUniform). The source adapters are
    LoRAs (the paper uses bottleneck adapters), loaded with :meth:`load_sources` from a
    trained ``lora_per_task`` model before training the scalings. ``init``: ``own`` starts
    each task from its own source (omega one-hot), ``uniform`` from 1/S each."""

    name = "scalearn"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA,
        "n_sources": Param("int", 0, "source adapters S (0: one per task)", low=0),
        "uniform": Param("bool", False, "one scalar per layer and source"),
        "init": Param("choice", "own", "starting scalings", choices=("own", "uniform"))}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0, n_sources: int = 0,
                 uniform: bool = False, init: str = "own") -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)
        self.n_sources = int(n_sources) or n_tasks
        self.uniform, self.init = bool(uniform), init

    def config(self) -> dict[str, object]:
        return {**super().config(), "n_sources": self.n_sources}

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return ScaLearnDelta(*in_out(module), self)

    def load_sources(self, per_task: Mapping[str, AdaptedLayer]) -> None:
        """Copy the factors of a trained ``lora_per_task`` model's layers (same targets,
        rank, alpha and number of tasks as the sources here) into the frozen sources."""
        missing = sorted(set(self.layers) - set(per_task))
        if missing:
            raise ValueError(f"scalearn: the source model has no adapter at {missing[:3]}")
        for name, layer in self.layers.items():
            src = per_task[name].delta
            a, b = getattr(src, "task_A", None), getattr(src, "task_B", None)
            if a is None or b is None or a.shape != delta_of(layer).source_A.shape:
                raise ValueError(f"scalearn: source layer {name} is not a lora_per_task layer "
                                 f"of {self.n_sources} tasks, rank {self.r}")
            if getattr(src, "scale", None) != delta_of(layer).scale:
                raise ValueError(f"scalearn: source layer {name} has another alpha / r")
            with torch.no_grad():
                delta_of(layer).source_A.copy_(a)
                delta_of(layer).source_B.copy_(b)

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        return delta_of(layer).fold_weight(task)

