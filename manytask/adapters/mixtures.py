"""Routed mixtures of low-rank experts: Mixture-of-LoRAs (MoA) and MoR1E."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param
from .base import ADAPTERS, ALPHA, RANK, AdapterMethod, positive_int
from .layer import Context, gated_lowrank, in_out, kaiming_rows, masked_mean


class MoaDelta(nn.Module):
    """One LoRA per task and a sequence-level router over them (see :class:`MixtureOfLoras`)."""

    def __init__(self, n_in: int, n_out: int, owner: MixtureOfLoras) -> None:
        super().__init__()
        k, r = owner.n_tasks, owner.r
        self.expert_A = nn.Parameter(torch.cat([kaiming_rows(r, n_in) for _ in range(k)]))
        self.expert_B = nn.Parameter(torch.zeros(n_out, k * r))
        self.router = nn.Linear(n_in, k)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)
        self.scale, self.r = owner.alpha / r, r
        self.owner = [owner]

    def weights(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The router's input (token mean of ``x``) and the experts' weights (B, K), on the
        simplex."""
        pooled = masked_mean(x.to(self.router.weight.dtype), mask)
        logits = self.router(pooled)
        owner = self.owner[0]
        if not self.training and owner.inference == "top1":
            return pooled, nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(
                logits.dtype)
        return pooled, torch.softmax(logits, dim=-1)

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        pooled, w = self.weights(x, ctx.mask)
        owner = self.owner[0]
        if self.training and owner.route_weight > 0:
            # the routing loss trains the router only: through a detached input its backward
            # stays inside this layer instead of running through the whole network again
            ce = nn.functional.cross_entropy(self.router(pooled.detach()), ctx.tasks.long())
            ctx.add_loss("route", owner.route_weight * ce / max(len(owner.layers), 1))
        gate = w.repeat_interleave(self.r, dim=1)
        return self.scale * gated_lowrank(x, self.expert_A, self.expert_B, gate)


@ADAPTERS.register()
class MixtureOfLoras(AdapterMethod):
    """Mixture-of-LoRAs (Feng et al., 2024, "Mixture-of-LoRAs: An Efficient Multitask Tuning
    for Large Language Models", Sec. 3): one LoRA (A_k, B_k) per task and, in every adapted
    layer, a router ``p = softmax(W_r mean_tokens(x) + b_r)`` over them, trained with the task
    labels by the routing loss ``L_route = CE(p, task)`` (weighted ``route_weight``, averaged
    over layers, added as the model's auxiliary loss; it trains the router alone, its input
    detached, while the task losses reach the router through the mixture). Output
    ``h = W0 x + (alpha/r) sum_k p_k B_k A_k x``. At inference ``top1`` keeps only the
    router's best LoRA (as the paper routes), ``soft`` keeps the mixture; no task id is used
    there. The LoRAs and the router count as shared parameters: every example reaches them
    through the router's weights."""

    name = "moa"
    params: ClassVar[dict[str, Param]] = {
        "r": RANK, "alpha": ALPHA,
        "route_weight": Param("float", 1.0, "weight of the routing cross-entropy", low=0),
        "inference": Param("choice", "top1", "routing at evaluation",
                                 choices=("top1", "soft"))}

    def __init__(self, n_tasks: int, r: int = 8, alpha: float = 16.0, route_weight: float = 1.0,
                 inference: str = "top1") -> None:
        super().__init__(n_tasks)
        self.r, self.alpha = positive_int(r, "r", self.name), float(alpha)
        self.route_weight, self.inference = float(route_weight), inference

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return MoaDelta(*in_out(module), self)

    def auxiliary_names(self) -> tuple[str, ...]:
        return ("route",) if self.route_weight > 0 else ()


class MoR1EDelta(nn.Module):
    """Rank-1 experts and a router reading the tokens and the instance's intuition."""

    def __init__(self, n_in: int, n_out: int, owner: MoR1E) -> None:
        super().__init__()
        e = owner.n_experts
        self.lora_A = nn.Parameter(kaiming_rows(e, n_in))   # row e: expert e's a_e
        self.lora_B = nn.Parameter(torch.zeros(n_out, e))   # column e: expert e's b_e
        self.router = nn.Linear(n_in, e)
        self.intuition_router = (
            nn.Linear(owner.intuition_dim, e, bias=False) if owner.intuition_dim else None
        )
        self.scale, self.top_k = owner.alpha, owner.top_k

    def weights(self, x: Tensor, ctx: Context) -> Tensor:
        """(B, E) expert weights on the simplex (renormalised over the top k)."""
        logits = self.router(masked_mean(x.to(self.router.weight.dtype), ctx.mask))
        if self.intuition_router is not None:
            if ctx.intuition is None:
                raise ValueError("moor1e: intuition_dim > 0 needs an 'intuition' input "
                                 "(B, intuition_dim): see manytask.adapters.intuition")
            logits = logits + self.intuition_router(ctx.intuition.to(logits.dtype))
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        return self.scale * gated_lowrank(x, self.lora_A, self.lora_B, self.weights(x, ctx))


@ADAPTERS.register()
class MoR1E(AdapterMethod):
    """Intuition-aware Mixture-of-Rank-1-Experts (Liu et al., 2024, "Intuition-aware
    Mixture-of-Rank-1-Experts for Parameter Efficient Finetuning", Sec. 3): E rank-1 experts
    ``b_e a_e^T`` per layer, ``h = W0 x + alpha sum_e g_e b_e a_e^T x`` with
    ``g = softmax(W_x mean_tokens(x) + W_c c)`` (top-k renormalised when ``top_k`` > 0), where
    ``c`` is the instance's intuition: the centroid of its cluster in a k-means clustering
    of frozen sentence embeddings (:func:`manytask.adapters.intuition`). All parameters are
    shared across tasks: the routing follows instances, not task ids."""

    name = "mor1e"
    params: ClassVar[dict[str, Param]] = {
        "n_experts": Param("int", 16, "rank-1 experts per layer", low=1),
        "alpha": Param("float", 1.0, "scale of the experts' sum", low=0, low_open=True),
        "top_k": Param("int", 0, "experts kept per example (0: all)", low=0),
        "intuition_dim": Param("int", 0, "size of the intuition vectors (0: none)",
                                     low=0)}

    def __init__(self, n_tasks: int, n_experts: int = 16, alpha: float = 1.0, top_k: int = 0,
                 intuition_dim: int = 0) -> None:
        super().__init__(n_tasks)
        self.n_experts = positive_int(n_experts, "n_experts", self.name)
        self.alpha, self.top_k, self.intuition_dim = float(alpha), int(top_k), int(intuition_dim)

    def make(self, name: str, module: nn.Module) -> nn.Module:
        return MoR1EDelta(*in_out(module), self)


def intuition(embeddings: Tensor, n_clusters: int, seed: int = 0,
              fit_on: Tensor | None = None) -> Tensor:
    """Each row's intuition vector for :class:`MoR1E`: the centroid of its k-means cluster.

    Clusters are fitted on ``fit_on`` (e.g. the training embeddings) when given, else on
    ``embeddings``; each row of ``embeddings`` then gets its nearest centroid.
    """
    from sklearn.cluster import KMeans

    data = (embeddings if fit_on is None else fit_on).detach().double().cpu().numpy()
    if not 1 <= n_clusters <= data.shape[0]:
        raise ValueError(f"intuition: n_clusters must be in [1, {data.shape[0]}], "
                         f"got {n_clusters}")
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(data)
    labels = km.predict(embeddings.detach().double().cpu().numpy())
    return torch.as_tensor(km.cluster_centers_[labels], dtype=embeddings.dtype)
