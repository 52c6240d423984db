"""Interpolation on the sphere between several models: NuSLERP, Multi-SLERP, Karcher mean.

Each of them is, per tensor, a linear combination of the inputs (or of their task vectors)
whose coefficients depend only on their norms and inner products. So one streaming pass
accumulates the K x K Gramian (in float64), the coefficients are solved in K dimensions, and a
second pass writes ``sum_i c_i x_i``: memory stays at a few chunks per input, whatever the
tensor's size. The Karcher iteration too stays in the span of the inputs, so it runs on the
K coefficients, never on a full tensor.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..params import Param
from .averaging import WEIGHT
from .base import Chunk, MergeMethod, TensorPlan, register


def _vectors(chunk: Chunk, use_deltas: bool) -> list[Tensor]:
    return chunk.deltas if use_deltas else chunk.inputs


def _gram(vectors: list[Tensor]) -> Tensor:
    flat = torch.stack([v.reshape(-1) for v in vectors]).double()
    return flat @ flat.T


def _combination(chunk: Chunk, coefficients: list[float], use_deltas: bool) -> Tensor:
    vectors = _vectors(chunk, use_deltas)
    out = vectors[0] * coefficients[0]
    for v, c in zip(vectors[1:], coefficients[1:], strict=True):
        out.add_(v, alpha=c)
    if use_deltas:
        assert chunk.base is not None
        out.add_(chunk.base)
    return out


def slerp_coefficients(cos: Tensor, t: float, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``sin((1 - t) theta) / sin(theta)`` and ``sin(t theta) / sin(theta)`` for
    ``cos(theta) = cos``; ``1 - t`` and ``t`` where ``1 - cos^2 <= eps^2`` (collinear), as
    mergekit's ``nuslerp``, so identical inputs never divide by zero."""
    cos = cos.clamp(-1, 1)
    collinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, torch.zeros_like(cos), cos))
    s = torch.where(collinear, torch.ones_like(theta), torch.sin(theta))
    ca = torch.where(collinear, torch.full_like(cos, 1 - t), torch.sin((1 - t) * theta) / s)
    cb = torch.where(collinear, torch.full_like(cos, t), torch.sin(t * theta) / s)
    return ca, cb


@register
class NuSlerp(MergeMethod):
    """NuSLERP (mergekit's "new" SLERP; Shoemake, 1985, "Animating Rotation with Quaternion
    Curves", Sec. 3, applied to weights): between two models ``a``, ``b`` with weights
    ``w_a``, ``w_b`` and ``t = w_b / (w_a + w_b)`` (0.5 if the weights sum to 0),
    ``slerp(a, b; t) = sin((1 - t) theta) / sin(theta) a + sin(t theta) / sin(theta) b``,
    ``cos(theta) = <a, b> / (|a| |b|)`` (norms clamped at 1e-7); linear where collinear.

    With a base model, ``a`` and ``b`` are the task vectors and the base is added back.
    The vectors are the whole flattened tensor (``nuslerp_flatten``, the default), or each
    row along the last dimension, or (``nuslerp_row_wise``) each slice along dimension 0,
    exactly as mergekit's ``nuslerp``.
    """

    name: ClassVar[str] = "nuslerp"
    base = "optional"
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2
    global_params: ClassVar[dict[str, Param]] = {
        "nuslerp_flatten": Param("bool", True, doc="one angle for the whole tensor"),
        "nuslerp_row_wise": Param("bool", False, doc="vectors along dim 0 (without flatten)"),
    }
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT}

    def t(self) -> float:
        w0, w1 = self.weight(0), self.weight(1)
        total = w0 + w1
        return 0.5 if abs(total) < 1e-6 else w1 / total

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        p = self.params
        # Per-row vectors (last dimension) lie inside a chunk; others need a pass first.
        whole = p["nuslerp_flatten"] or len(shape) < 2 or p["nuslerp_row_wise"]
        return TensorPlan(observe=whole)

    def _dots(self, a: Tensor, b: Tensor, dim: int | None) -> Tensor:
        a, b = a.double(), b.double()
        if dim is None:
            a, b = a.reshape(-1), b.reshape(-1)
            dim = 0
        return torch.stack([(a * a).sum(dim), (b * b).sum(dim), (a * b).sum(dim)])

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        a, b = _vectors(chunk, chunk.base is not None)
        dim = None if self.params["nuslerp_flatten"] or a.dim() < 2 else 0
        state["dots"] = state.get("dots", 0) + self._dots(a, b, dim)

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        a, b = _vectors(chunk, chunk.base is not None)
        dots = state["dots"] if "dots" in state else self._dots(a, b, -1).unsqueeze(-1)
        na = dots[0].sqrt().clamp_min(1e-7)
        nb = dots[1].sqrt().clamp_min(1e-7)
        ca, cb = slerp_coefficients(dots[2] / (na * nb), self.t())
        out = a * ca.to(a.dtype) + b * cb.to(b.dtype)
        if chunk.base is not None:
            out.add_(chunk.base)
        return out


@register
class MultiSlerp(MergeMethod):
    """Multi-SLERP (Goddard, 2025, "Multi-SLERP", goddard.blog; mergekit's ``multislerp``):
    barycentric interpolation on the hypersphere of K tensors (task vectors if a base is
    given). With weights ``w`` (normalised to sum 1 by default), units ``u_i = x_i /
    (|x_i| + eps)``, the mean direction ``m = sum_i w_i u_i / |sum_i w_i u_i|``, the tangent
    ``v = sum_i w_i (u_i - <u_i, m> m)``, the result is
    ``(cos|v| m + sin|v| v / |v|) * sum_i w_i |x_i|`` (``|v|`` plus eps), the exponential map
    at ``m`` scaled to the mean norm.

    One model: that model, unchanged (as mergekit). Weighted units that cancel: two models
    are averaged linearly, more are an error naming the tensor (as mergekit), except when
    no model changes the tensor at all (a frozen layer), which gives the base.
    """

    name: ClassVar[str] = "multislerp"
    base = "optional"
    global_params: ClassVar[dict[str, Param]] = {
        "normalize_weights": Param("bool", True, doc="weights divided by their sum"),
        "eps": Param("float", 1e-8, low=0.0, low_open=True, doc="numerical guard"),
    }
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT}

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=len(self.models) > 1)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        state["gram"] = state.get("gram", 0) + _gram(_vectors(chunk, chunk.base is not None))

    def coefficients(self, gram: Tensor, name: str) -> list[float]:
        eps = self.params["eps"]
        w = torch.tensor([self.weight(i) for i in range(len(self.models))], dtype=torch.float64)
        if self.params["normalize_weights"]:
            w = w / w.sum()
        norms = gram.diagonal().clamp_min(0).sqrt()
        inv = 1 / (norms + eps)
        m = w * inv  # mean direction as coefficients of the x_i
        mean_norm = max(float(m @ gram @ m), 0.0) ** 0.5
        if float(norms.max()) < eps:
            # No model changes this tensor (a frozen layer): the base, where mergekit
            # raises "sum is zero" for three or more models.
            return [0.0] * len(w)
        if mean_norm < eps:
            if len(w) == 2:
                return w.tolist()
            raise ValueError(
                f"multislerp: tensor {name!r}: the weighted unit vectors sum to zero "
                "(antipodal inputs with balancing weights); change the weights"
            )
        m = m / mean_norm
        dots = (gram @ m) * inv  # <u_i, m>
        tangent = w * inv - (w @ dots) * m
        tn = float(tangent @ gram @ tangent) ** 0.5 + eps
        r = m * math.cos(tn) + tangent * (math.sin(tn) / tn)
        return (r * float(norms @ w)).tolist()

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        if len(self.models) == 1:
            return chunk.inputs[0].clone()
        if "coef" not in state:
            state["coef"] = self.coefficients(state["gram"], chunk.name)
        return _combination(chunk, state["coef"], chunk.base is not None)


@register
class Karcher(MergeMethod):
    """Karcher (Riemannian/Frechet) mean on the unit sphere (Karcher, 1977, "Riemannian
    center of mass and mollifier smoothing", Eq. 1.1: the minimiser of
    ``sum_i alpha_i d(m, u_i)^2``, ``d`` the angle), as mergekit's ``karcher``: the directions
    ``u_i = x_i / |x_i|`` of the K models' weights, equal ``alpha_i = 1/K``, fixed-point
    iteration ``m <- cos|v| m + sin|v| v / |v|`` with
    ``v = sum_i alpha_i theta_i / sin(theta_i) (u_i - cos(theta_i) m)`` until ``|v| < tol``
    (at most ``max_iter`` steps), and the result ``(sum_i alpha_i |x_i|) m``.

    Every iterate lies in the span of the inputs, so the iteration runs on K coefficients
    from the Gramian. The base model, if given, only supplies files (list it among the
    models to include it, which is what mergekit does with a ``base_model``).
    """

    name: ClassVar[str] = "karcher"
    base = "reference"
    global_params: ClassVar[dict[str, Param]] = {
        "max_iter": Param("int", 10, low=1, doc="most fixed-point iterations"),
        "tol": Param("float", 1e-5, low=0.0, low_open=True, doc="stop when |v| < tol"),
    }

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=len(self.models) > 1)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        state["gram"] = state.get("gram", 0) + _gram(chunk.inputs)

    def coefficients(self, gram: Tensor) -> list[float]:
        tol = self.params["tol"]
        k = gram.shape[0]
        norms = gram.diagonal().clamp_min(0).sqrt()
        valid = [i for i in range(k) if float(norms[i]) > tol]
        if not valid:
            return [0.0] * k
        alpha = torch.zeros(k, dtype=torch.float64)
        alpha[valid] = 1.0 / len(valid)
        inv = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms))

        def norm(c: Tensor) -> float:
            return max(float(c @ gram @ c), 0.0) ** 0.5

        c = alpha * inv  # the mean as coefficients of the x_i
        mean_norm = norm(c)
        if mean_norm < tol:
            c = torch.zeros(k, dtype=torch.float64)
            c[valid[0]] = float(inv[valid[0]])
        else:
            c = c / mean_norm
        for _ in range(self.params["max_iter"]):
            dots = ((gram @ c) * inv).clamp(-1, 1)  # cos(theta_i) = <m, u_i>
            tangent = torch.zeros(k, dtype=torch.float64)
            for i in valid:
                theta = math.acos(float(dots[i]))
                if theta < tol:
                    continue
                f = float(alpha[i]) * theta / math.sin(theta)
                tangent[i] += f * float(inv[i])
                tangent -= f * float(dots[i]) * c
            tn = norm(tangent)
            if tn < tol:
                break
            c = math.cos(tn) * c + math.sin(tn) * tangent / tn
            unit = norm(c)
            if unit > tol:
                c = c / unit
        scale = float(norms.sum()) / k  # alphas are 1/K over all inputs, as mergekit
        return (c * scale).tolist()

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        if len(self.models) == 1:
            return chunk.inputs[0].clone()
        if "coef" not in state:
            state["coef"] = self.coefficients(state["gram"])
        return _combination(chunk, state["coef"], False)
