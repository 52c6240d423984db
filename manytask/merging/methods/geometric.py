"""Merges defined by angles between weights: SLERP and Model Stock."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..params import Param
from .base import Chunk, MergeMethod, TensorPlan, register


@register
class Slerp(MergeMethod):
    """Spherical linear interpolation between two models (Shoemake, 1985, "Animating Rotation
    with Quaternion Curves", Sec. 3; as popularised for merging by mergekit), per tensor:
    with ``cos(Omega) = <a, b> / (|a| |b|)``,
    ``slerp(a, b; t) = sin((1 - t) Omega) / sin(Omega) a + sin(t Omega) / sin(Omega) b``.

    ``a`` is the base model (``t = 0``) and ``b`` the one listed model (``t = 1``). Nearly
    collinear tensors (``|cos Omega| > dot_threshold``) are interpolated linearly, as in
    mergekit, whose results this matches for a scalar ``t``.
    """

    name: ClassVar[str] = "slerp"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 1
    global_params: ClassVar[dict[str, Param]] = {
        "t": Param("float", low=0.0, high=1.0, doc="interpolation factor (0: base, 1: model)"),
        "dot_threshold": Param("float", 0.9995, low=0.0, high=1.0, doc="linear above this"),
    }

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=True)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        assert chunk.base is not None
        a, b = chunk.base.reshape(-1), chunk.inputs[0].reshape(-1)
        # Per-chunk dots in the compute dtype, accumulated across chunks in float64.
        acc = torch.tensor([float(a @ a), float(b @ b), float(a @ b)], dtype=torch.float64)
        state["dots"] = state.get("dots", 0) + acc

    @staticmethod
    def coefficients(aa: float, bb: float, ab: float, t: float, threshold: float) -> tuple[
        float, float
    ]:
        """The coefficients of ``a`` and ``b`` from the squared norms and the inner product."""
        na = math.sqrt(aa) if math.sqrt(aa) > 1e-8 else 1.0
        nb = math.sqrt(bb) if math.sqrt(bb) > 1e-8 else 1.0
        dot = max(-1.0, min(1.0, ab / (na * nb)))
        if abs(dot) > threshold:
            return 1.0 - t, t
        omega = math.acos(dot)
        s = math.sin(omega)
        if s <= 1e-12:
            # Identical (or opposite) directions with dot_threshold 1.0: the angle is 0 and
            # the spherical formula is 0/0; its limit, the linear one, is the answer.
            # (mergekit returns NaN here.)
            return 1.0 - t, t
        return math.sin((1 - t) * omega) / s, math.sin(t * omega) / s

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        aa, bb, ab = state["dots"].tolist()
        ca, cb = self.coefficients(aa, bb, ab, self.params["t"], self.params["dot_threshold"])
        return chunk.base.mul(ca).add_(chunk.inputs[0], alpha=cb)


@register
class ModelStock(MergeMethod):
    """Model Stock (Jang et al., 2024, "Model Stock: All we need is just a few fine-tuned
    models", Sec. 3, the interpolation ratio from the angle between fine-tuned models): per
    tensor, with ``k`` fine-tuned models and
    ``cos(theta)`` the mean pairwise cosine between their task vectors,
    ``t = k cos(theta) / (1 + (k - 1) cos(theta))`` and
    ``theta = t * mean_i(theta_i) + (1 - t) * theta_0``.

    The paper assumes equal pairwise angles; averaging the pairwise cosines is the estimate
    mergekit uses too. ``filter_wise`` computes one ``t`` per row (output filter). Where
    ``1 + (k - 1) cos`` vanishes the base is kept (``t = 0``), as in mergekit.
    """

    name: ClassVar[str] = "model_stock"
    min_models: ClassVar[int] = 2
    global_params: ClassVar[dict[str, Param]] = {
        "filter_wise": Param("bool", False, doc="one interpolation ratio per row")
    }

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=not self.params["filter_wise"])

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        d = chunk.stacked_deltas().reshape(len(self.models), -1)
        state["gram"] = state.get("gram", 0) + (d @ d.T).double()

    @staticmethod
    def ratio(gram: Tensor) -> Tensor:
        """``t`` from Gramians of shape (..., k, k), float64."""
        k = gram.shape[-1]
        norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
        cos = gram / (norms.unsqueeze(-1) * norms.unsqueeze(-2)).clamp_min(1e-6)
        iu = torch.triu_indices(k, k, offset=1)
        mean_cos = cos[..., iu[0], iu[1]].clamp(-1, 1).mean(-1)
        denominator = 1 + (k - 1) * mean_cos
        singular = denominator.abs() < 1e-6
        safe = torch.where(singular, torch.ones_like(denominator), denominator)
        return torch.where(singular, torch.zeros_like(mean_cos), k * mean_cos / safe)

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        d = chunk.stacked_deltas()
        mean = d.mean(0)
        if self.params["filter_wise"]:
            rows = d.reshape(d.shape[0], d.shape[1] if d.dim() > 2 else 1, -1).double()
            gram = torch.einsum("irc,jrc->rij", rows, rows)
            t = self.ratio(gram).to(mean.dtype)
            t = t.reshape(-1, *([1] * (mean.dim() - 1))) if mean.dim() > 1 else t
            return chunk.base + t * mean
        t_value = float(self.ratio(state["gram"]))
        return chunk.base.add(mean, alpha=t_value)
