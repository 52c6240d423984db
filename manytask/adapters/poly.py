"""Polytropon (Poly) and Multi-Head Routing (MHR): task-routed mixtures of a LoRA inventory."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions.relaxed_bernoulli import RelaxedBernoulli

from ..registry import Param
from .base import ADAPTERS, AdapterMethod, positive_int
from .layer import AdaptedLayer, Context, in_out

EPS = 1e-12  # PEFT's, so that the two agree to rounding


class PolyDelta(nn.Module):
    """The inventory of one layer, laid out as PEFT's ``poly`` layer lays it out:
    ``poly_lora_A`` (h, S, in / h, r), ``poly_lora_B`` (h, S, r, out / h) and the routing
    logits ``task_logits`` (K, h S) (PEFT: ``poly_router.module_logits``)."""

    def __init__(self, n_in: int, n_out: int, owner: Poly) -> None:
        super().__init__()
        h, s, r = owner.n_splits, owner.n_skills, owner.r
        if n_in % h or n_out % h:
            raise ValueError(f"{owner.name}: n_splits {h} must divide the layer's sizes "
                             f"{n_in} and {n_out}")
        a = torch.empty(h, s, n_in // h, r)
        for i in range(h):
            for j in range(s):
                w = torch.empty(r, n_in // h)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                a[i, j] = w.t()
        self.poly_lora_A = nn.Parameter(a)
        self.poly_lora_B = nn.Parameter(torch.zeros(h, s, r, n_out // h))
        self.task_logits = nn.Parameter(torch.empty(owner.n_tasks, h * s).uniform_(-1e-3, 1e-3))
        self.h, self.s, self.r, self.n_in, self.n_out = h, s, r, n_in, n_out

    def routing(self, tasks: Tensor) -> Tensor:
        """(B, h, S) skill weights per head: a relaxed Bernoulli draw (temperature 1) in
        training, the sigmoid at evaluation, normalised to sum to 1 over skills."""
        logits = self.task_logits[tasks.long()].view(-1, self.h, self.s)
        if self.training:
            logits = RelaxedBernoulli(temperature=torch.tensor(1.0), logits=logits).rsample()
        else:
            logits = torch.sigmoid(logits)
        return logits / (logits.sum(dim=-1, keepdim=True) + EPS)

    def mixed(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """The per-example A (B, in, r) and B (B, r, out) mixed from the inventory."""
        a = torch.einsum("bqs,qsdr->bqdr", weights, self.poly_lora_A)
        b = torch.einsum("bqs,qsrd->bqrd", weights, self.poly_lora_B)
        n = weights.shape[0]
        return a.reshape(n, self.n_in, self.r), b.transpose(1, 2).reshape(n, self.r, self.n_out)

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        a, b = self.mixed(self.routing(ctx.tasks))
        squeeze = x.dim() == 2
        x3 = x.unsqueeze(1) if squeeze else x
        out = x3.to(a.dtype).bmm(a).bmm(b) / self.r
        return out.squeeze(1) if squeeze else out


@ADAPTERS.register()
class Poly(AdapterMethod):
    """Polytropon (Ponti, Sordoni, Bengio and Reddy, 2023, "Combining Parameter-efficient
    Modules for Task-level Generalisation", Eq. 2-3): an inventory of S LoRA skills per layer
    and a task-skill routing matrix Z; task t's adapter is ``A_t = sum_j w_tj A_j``,
    ``B_t = sum_j w_tj B_j`` with ``w_t = z_t / sum_j z_tj``, ``z_t`` a relaxed Bernoulli
    draw from ``sigmoid(Z_t)`` in training and ``sigmoid(Z_t)`` at evaluation, and
    ``h = W0 x + (1/r) x A_t B_t``. Laid out and scaled exactly as PEFT's ``poly``."""

    name = "poly"
    params: ClassVar[dict[str, Param]] = {
        "r": Param("int", 8, "rank of each skill", low=1),
        "n_skills": Param("int", 4, "skills S in the inventory", low=1)}
    n_splits = 1

    def __init__(self, n_tasks: int, r: int = 8, n_skills: int = 4) -> None:
        super().__init__(n_tasks)
        self.r = positive_int(r, "r", self.name)
        self.n_skills = positive_int(n_skills, "n_skills", self.name)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return PolyDelta(*in_out(module), self)

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        d: Any = layer.delta
        if d.training:
            raise TypeError(f"{self.name}: fold in eval mode (training routing is sampled)")
        a, b = d.mixed(d.routing(torch.tensor([task], device=d.task_logits.device)))
        return (a[0] @ b[0]).t() / d.r


@ADAPTERS.register()
class MultiHeadRouting(Poly):
    """Multi-Head Routing (Caccia et al., 2023, "Multi-Head Adapter Routing for
    Cross-Task Generalization", Sec. 3): Poly with each skill's A and B split into h blocks
    along the input and output dimensions, each head routed by its own row of the routing
    matrix: ``A_t[q] = sum_j w_tqj A_j[q]`` (and B likewise), ``q = 1..h``. PEFT's ``poly``
    with ``n_splits = h``."""

    name = "mhr"
    params: ClassVar[dict[str, Param]] = {
              **Poly.params,
        "n_splits": Param("int", 4, "heads h (must divide the layers' sizes)", low=1)}

    def __init__(self, n_tasks: int, r: int = 8, n_skills: int = 4, n_splits: int = 4) -> None:
        super().__init__(n_tasks, r, n_skills)
        self.n_splits = positive_int(n_splits, "n_splits", self.name)
