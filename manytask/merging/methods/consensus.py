"""Consensus merging with TALL masks (Wang et al., 2024, "Localizing Task Information for
Improved Model Merging and Compression", ICML 2024).

For task vectors ``tau_t`` and the multi-task vector ``tau_MTL = sum_t w_t tau_t`` (task
arithmetic), task ``t``'s TALL mask keeps the parameters where that task carries more than a
``lambda_t`` share of the rest (the TALL mask of Sec. 3):

    m_t = 1{ |tau_t| >= lambda_t * |tau_MTL - tau_t| }

A parameter used by fewer than ``k`` tasks is "selfish" (k = 1) or "catastrophic" (k = 0) and
is removed: the consensus mask is ``m = 1{ sum_t m_t >= k }`` (consensus merging, Sec. 4;
k = 2 by default) and the merged model is ``theta_0 + lambda * (m * tau_MTL)``.

With per-model weights the masks compare the weighted task vectors ``w_t tau_t`` (the paper's
definition when all weights are 1, the default).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..params import Param
from .averaging import LAMBDA, WEIGHT
from .base import Chunk, MergeMethod, register


def tall_masks(deltas: Tensor, mixed: Tensor, lambdas: Tensor) -> Tensor:
    """Boolean (K, ...) TALL masks of stacked task vectors ``deltas`` given ``tau_MTL``."""
    lam = lambdas.reshape(-1, *([1] * mixed.dim())).to(deltas.dtype)
    return deltas.abs() >= lam * (mixed.unsqueeze(0) - deltas).abs()


@register
class Consensus(MergeMethod):
    """Consensus task arithmetic with TALL masks; see the module docstring.

    Per-model ``mask_lambda`` (the paper tunes it per task on validation data, so it has no
    default) and ``weight``; global ``k`` (minimum number of tasks that must use a parameter,
    default 2) and ``lambda`` (scale of the masked multi-task vector)."""

    name: ClassVar[str] = "consensus"
    min_models: ClassVar[int] = 2
    global_params: ClassVar[dict[str, Param]] = {
        "lambda": LAMBDA,
        "k": Param("int", 2, low=0, doc="minimum number of tasks using a parameter"),
    }
    model_params: ClassVar[dict[str, Param]] = {
        "weight": WEIGHT,
        "mask_lambda": Param("float", low=0.0, doc="TALL mask threshold lambda_t"),
    }

    def check(self) -> None:
        if self.params["k"] > len(self.models):
            raise ValueError(
                f"consensus: k={self.params['k']} exceeds the number of models "
                f"({len(self.models)}); every parameter would be removed"
            )

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        assert chunk.base is not None
        d = chunk.stacked_deltas()
        w = torch.tensor([self.weight(i) for i in range(len(self.models))], dtype=d.dtype)
        d.mul_(w.reshape(-1, *([1] * (d.dim() - 1))))
        mixed = d.sum(0)
        lambdas = torch.tensor([m["mask_lambda"] for m in self.models])
        votes = tall_masks(d, mixed, lambdas).sum(0)
        return chunk.base.add(torch.where(votes >= self.params["k"], mixed, 0.0),
                              alpha=self.params["lambda"])
