"""Merges that choose, per element, which task vectors count: SCE, RAM, RAM+, NearSwap and
Arcee Fusion (all as mergekit 0.1.5 defines them, whose results these reproduce)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..params import Param
from ..selection import select
from .base import Chunk, MergeMethod, TensorPlan, register

INT8_MASK = Param("bool", False, doc="accepted for mergekit configs; masks are exact either way")


def _stack(chunk: Chunk) -> Tensor:
    return chunk.stacked_deltas()


def _variance(tv: Tensor) -> Tensor:
    """Population variance over the models (dim 0), as products with a vector of 1/K:
    ``torch.var(0)`` over a short first dimension is about 10x slower here."""
    k = tv.shape[0]
    flat = tv.reshape(k, -1)
    ones = torch.full((k,), 1.0 / k, dtype=tv.dtype)
    dev = flat - ones @ flat
    return (ones @ dev.square_()).reshape(tv.shape[1:])


@register
class Sce(MergeMethod):
    """SCE (Wan et al., 2024, "FuseChat: Knowledge Fusion of Chat Models", Sec. 3.3,
    Select-Calculate-Erase), per tensor on the task vectors ``tau_i``:

    1. *select*: keep the ``select_topk`` fraction of elements (of those with non-zero
       variance) with the largest variance ``Var_i(tau_i)`` across the models;
    2. *calculate*: model weights ``w_i = mean(tau_i^2) / sum_j mean(tau_j^2)`` (uniform if
       all are ~0);
    3. *erase*: drop elements whose sign differs from the sign of ``sum_i tau_i`` (+1 for 0);

    ``theta = theta_0 + sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6)``, ``m_i`` the erase
    mask. The selection threshold is an exact order statistic, so it keeps all ties at the
    k-th variance (mergekit's ``topk`` keeps an arbitrary k of them). Memory: one float
    buffer of the tensor's size for the variances when ``select_topk < 1``.
    """

    name: ClassVar[str] = "sce"
    global_params: ClassVar[dict[str, Param]] = {
        "select_topk": Param("float", 1.0, low=0.0, high=1.0, doc="fraction selected"),
        "int8_mask": INT8_MASK,
    }

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        select_pass = 0.0 < self.params["select_topk"] < 1.0
        return TensorPlan(observe=True, passes=2 if select_pass else 1)

    def _selected(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        key = ("sce",)
        if key in chunk.memo:
            return chunk.memo[key]
        tv = _stack(chunk)
        topk = self.params["select_topk"]
        if topk <= 0:
            tv.zero_()
        elif topk < 1:
            threshold = state["threshold"]
            if threshold is None:
                tv.zero_()
            else:
                tv.mul_(_variance(tv).abs_() >= threshold)
        chunk.memo[key] = tv
        return tv

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        if state["pass"] == 0 and 0.0 < self.params["select_topk"] < 1.0:
            var = _variance(_stack(chunk)).reshape(-1)
            state.setdefault("var", []).append(var)
            return
        if "var" in state:  # the selection threshold, once, from the whole tensor
            var = torch.cat(state.pop("var"))
            k = int(int(torch.count_nonzero(var)) * self.params["select_topk"])
            state["threshold"] = (
                None if k == 0 else select(var.abs_(), [var.numel() - k], overwrite=True)[0]
            )
        tv = self._selected(chunk, state)
        sq = tv.reshape(tv.shape[0], -1).double().square().sum(1)
        state["sq"] = state.get("sq", 0) + sq
        state["n"] = state.get("n", 0) + tv[0].numel()

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        tv = self._selected(chunk, state)
        if "w" not in state:
            means = state["sq"] / max(state["n"], 1)
            total = float(means.sum())
            k = tv.shape[0]
            w = torch.full((k,), 1.0 / k) if abs(total) < 1e-6 else means / total
            state["w"] = w.to(tv.dtype)
        w = state["w"].reshape(-1, *([1] * (tv.dim() - 1)))
        majority = (tv.sum(0) >= 0).to(tv.dtype).mul_(2).sub_(1)
        kept = (tv.sign() == majority).to(tv.dtype).mul_(w)
        merged = (tv * kept).sum(0) / kept.sum(0).clamp_min(1e-6)
        return chunk.base + merged


def _contributions(chunk: Chunk, epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """Task vectors zeroed where ``|tau| <= epsilon``, the mask of the rest, and the
    number of contributing models per element."""
    tv = _stack(chunk)
    nonzero = tv.abs() > epsilon
    return tv * nonzero, nonzero, nonzero.sum(0)


@register
class Ram(MergeMethod):
    """RAM, Reinforced Agent Merging (arXiv:2601.13572; mergekit's ``ram``): an element
    changed by one model (``|tau_i| > epsilon``) takes that change, one changed by several
    takes their mean: ``theta = theta_0 + sum_i tau_i' / max(c, 1)`` with ``tau_i'`` the
    task vector zeroed at ``|tau_i| <= epsilon`` and ``c`` the number of models changing it."""

    name: ClassVar[str] = "ram"
    global_params: ClassVar[dict[str, Param]] = {
        "epsilon": Param("float", 1e-5, low=0.0, doc="changes at most this are ignored"),
    }

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        tv, _, count = _contributions(chunk, self.params["epsilon"])
        return chunk.base + tv.sum(0) / count.clamp_min(1)


@register
class RamPlusTl(MergeMethod):
    """RAM+ tensor-local (arXiv:2601.13572; mergekit's ``ramplus_tl``): RAM, with each
    model's unique changes scaled by ``lambda_i = 1 + r * clamp(rho_i, 0, alpha)``, where
    ``rho_i`` is the number of model i's changes shared with another model over the number
    it alone makes, counted over the whole tensor."""

    name: ClassVar[str] = "ramplus_tl"
    global_params: ClassVar[dict[str, Param]] = {
        "r": Param("float", 0.1, doc="strength of the unique-change rescaling"),
        "alpha": Param("float", 0.2, low=0.0, doc="upper clamp of the shared/unique ratio"),
        "epsilon": Param("float", 1e-5, low=0.0, doc="changes at most this are ignored"),
    }

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=True)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        _, nonzero, count = _contributions(chunk, self.params["epsilon"])
        k = nonzero.shape[0]
        flat = nonzero.reshape(k, -1)
        shared = (flat & (count.reshape(1, -1) > 1)).sum(1)
        unique = (flat & (count.reshape(1, -1) == 1)).sum(1)
        state["shared"] = state.get("shared", 0) + shared
        state["unique"] = state.get("unique", 0) + unique

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        p = self.params
        tv, _, count = _contributions(chunk, p["epsilon"])
        rho = state["shared"] / state["unique"].clamp(min=p["epsilon"])
        lam = (1 + p["r"] * rho.clamp(min=0, max=p["alpha"])).to(tv.dtype)
        unique = (count == 1).to(tv.dtype)
        overlap = (count > 1).to(tv.dtype) / count.clamp_min(1)
        scale = lam.reshape(-1, *([1] * (tv.dim() - 1))) * unique + overlap
        return chunk.base + (tv * scale).sum(0)


@register
class NearSwap(MergeMethod):
    """NearSwap (alchemonaut, 2024, QuartetAnemoi model card; mergekit's ``nearswap``):
    take the model's value where it is near the base's, elementwise
    ``w = clamp(t / max(|a - b|, 1e-6), 0, 1)``, ``theta = w b + (1 - w) a``, ``a`` the base
    and ``b`` the one model; ``t`` is the distance below which ``b`` is taken whole."""

    name: ClassVar[str] = "nearswap"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 1
    global_params: ClassVar[dict[str, Param]] = {
        "t": Param("float", low=0.0, doc="similarity threshold"),
    }

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        a, b = chunk.base, chunk.inputs[0]
        assert a is not None
        w = (self.params["t"] / (a - b).abs_().clamp_min_(1e-6)).clamp_(0, 1)
        return w * b + (1 - w) * a


@register
class ArceeFusion(MergeMethod):
    """Arcee Fusion (Arcee AI, 2025; mergekit's ``arcee_fusion``): take the model's change
    where it matters most. Importance ``s = |b - a| * KL(softmax(b) || softmax(a))``, the KL
    divergence per row (last dimension, 1e-8 added to each probability); the change is
    kept where ``s >= median(s) + 1.5 (Q3(s) - Q1(s))`` (Tukey's outlier fence), elsewhere
    the base ``a`` stays.

    Quantiles are the order statistics at ``floor(q (n - 1))``, exact for every size
    (mergekit estimates them from a random sample of 1e6 elements above that size, so its
    results there vary from run to run). Memory: two float buffers of the tensor's size.
    """

    name: ClassVar[str] = "arcee_fusion"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 1

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=True)

    @staticmethod
    def importance(a: Tensor, b: Tensor) -> Tensor:
        p = torch.softmax(b, dim=-1) + 1e-8
        q = torch.softmax(a, dim=-1) + 1e-8
        kl = (p * torch.log(p / q)).sum(-1, keepdim=True)
        return (b - a).abs() * kl

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        assert chunk.base is not None
        imp = self.importance(chunk.base, chunk.inputs[0]).reshape(-1)
        state.setdefault("imp", []).append(imp)

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        a, b = chunk.base, chunk.inputs[0]
        assert a is not None
        if "threshold" not in state:
            imp = torch.cat(state["imp"])
            n = imp.numel()
            q1, med, q3 = (torch.tensor(v, dtype=imp.dtype) for v in
                           select(imp, [int(q * (n - 1)) for q in (0.25, 0.5, 0.75)]))
            state["threshold"] = med + 1.5 * (q3 - q1)
        imp = state["imp"][chunk.index].reshape(a.shape)
        mask = (imp >= state["threshold"]).to(a.dtype)
        return a + (b - a) * mask
