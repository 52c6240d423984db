"""Weight averaging, task arithmetic and MetaGPT's closed-form coefficients.

Conventions: ``weight`` is a per-model coefficient (default 1); with ``normalize`` the weighted
sum is divided by the sum of the weights, so equal weights give the plain mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..params import Param
from .base import Chunk, MergeMethod, TensorPlan, register

WEIGHT = Param("float", 1.0, doc="the model's coefficient")
LAMBDA = Param("float", 1.0, doc="scale of the merged task vector")


def _weighted_sum(tensors: list[Tensor], weights: list[float]) -> Tensor:
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(t, alpha=w)
    return out


@register
class Linear(MergeMethod):
    """Weight averaging (Wortsman et al., 2022, "Model soups", Sec. 2.1: the uniform soup
    ``theta = (1/K) sum_i theta_i``), with per-model weights:
    ``theta = sum_i w_i theta_i / sum_i w_i`` (``normalize=False``: no division).

    The base model, if given, is not averaged (list it among the models to include it); it
    only supplies the config and tokenizer files. Same result as mergekit's ``linear``.
    """

    name: ClassVar[str] = "linear"
    base = "reference"
    global_params: ClassVar[dict[str, Param]] = {
        "normalize": Param("bool", True, doc="divide by the sum of the weights")
    }
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT}

    def check(self) -> None:
        total = sum(self.weight(i) for i in range(len(self.models)))
        if self.params["normalize"] and abs(total) < 1e-12:
            raise ValueError("linear: the model weights sum to 0, so they cannot be normalised")

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        ws = [self.weight(i) for i in range(len(self.models))]
        out = _weighted_sum(chunk.inputs, ws)
        if self.params["normalize"]:
            out.div_(sum(ws))
        return out


@register
class TaskArithmetic(MergeMethod):
    """Task arithmetic (Ilharco et al., 2023, "Editing Models with Task Arithmetic", Sec. 2):
    ``theta = theta_0 + lambda * sum_i w_i tau_i`` with task vectors ``tau_i = theta_i - theta_0``.

    ``normalize=True`` divides the weighted sum by ``sum_i w_i``. Same result as mergekit's
    ``task_arithmetic`` (whose ``lambda`` also scales after normalisation).
    """

    name: ClassVar[str] = "task_arithmetic"
    global_params: ClassVar[dict[str, Param]] = {
        "lambda": LAMBDA,
        "normalize": Param("bool", False, doc="divide by the sum of the weights"),
    }
    model_params: ClassVar[dict[str, Param]] = {"weight": WEIGHT}

    def check(self) -> None:
        total = sum(self.weight(i) for i in range(len(self.models)))
        if self.params["normalize"] and abs(total) < 1e-12:
            raise ValueError("task_arithmetic: the weights sum to 0; cannot normalise")

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        ws = [self.weight(i) for i in range(len(self.models))]
        mixed = _weighted_sum(chunk.deltas, ws)
        scale = self.params["lambda"] / (sum(ws) if self.params["normalize"] else 1.0)
        assert chunk.base is not None
        return chunk.base.add(mixed, alpha=scale)


@register
class MetaGPT(MergeMethod):
    """MetaGPT's model-exclusive task arithmetic (Zhou et al., 2024, "MetaGPT: Merging Large
    Language Models Using Model Exclusive Task Arithmetic", Sec. 3, its closed-form scaling
    coefficients):
    ``theta = theta_0 + sum_i lambda_i tau_i`` with
    ``lambda_i = ||tau_i||^2 / sum_j ||tau_j||^2``, so the coefficients sum to 1.

    The paper derives them per layer; here each tensor is its own "layer" (the finest split the
    closed form allows). A tensor that no model changes is copied from the base.
    """

    name: ClassVar[str] = "metagpt"
    min_models: ClassVar[int] = 2

    def plan(self, name: str, shape: tuple[int, ...]) -> TensorPlan:
        return TensorPlan(observe=True)

    def observe(self, chunk: Chunk, state: dict[str, Any]) -> None:
        flat = [d.reshape(-1) for d in chunk.deltas]
        sq = torch.tensor([float(torch.dot(f, f)) for f in flat], dtype=torch.float64)
        state["sq"] = state.get("sq", 0) + sq

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        sq = state["sq"]
        total = float(sq.sum())
        if total == 0.0:
            return chunk.base.clone()
        lambdas = (sq / total).tolist()
        return chunk.base + _weighted_sum(chunk.deltas, lambdas)
