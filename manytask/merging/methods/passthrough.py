"""Passthrough: copy one model's tensors, optionally scaled (mergekit's ``passthrough``).

With ``slices`` in the configuration (see :mod:`manytask.merging.config`) the tensors of
each output layer come from a chosen layer of a chosen model, which is how depth up-scaling
stacks layer ranges of several models into a deeper one (Kim et al., 2024, "SOLAR 10.7B:
Scaling Large Language Models with Simple yet Effective Depth Up-Scaling", Sec. 2.1).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ..params import Param
from .base import Chunk, MergeMethod, register


@register
class Passthrough(MergeMethod):
    """``theta = scale * theta_1``: the one input model's tensor, times its ``scale``
    (default 1, an exact copy)."""

    name: ClassVar[str] = "passthrough"
    base = "reference"
    max_models: ClassVar[int | None] = 1
    model_params: ClassVar[dict[str, Param]] = {
        "scale": Param("float", 1.0, doc="factor applied to the model's tensor"),
    }

    def combine(self, chunk: Chunk, state: dict[str, Any]) -> Tensor:
        scale = self.models[0]["scale"]
        x = chunk.inputs[0]
        return x if scale == 1.0 else x * scale
