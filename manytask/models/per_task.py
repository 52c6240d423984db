"""Shared plumbing of the architectures whose heads read per-task features.

Convention used by every architecture in this package: **"shared" is everything below the
towers** (input layer, experts, gates, fusion units), and ``features(x)`` returns a dict
``{task: tensor}`` of what each tower reads. Gates are task-specific, but they read the input and
sit below the towers, so they belong to the shared part; what a gradient-balancing method
combines is then the gradient of every parameter that more than one task's loss can reach.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..tasks import Task
from .base import Features, MultiTaskModel, mlp
from .experts import Routed, check_sizes


class PerTaskModel(MultiTaskModel):
    """A :class:`MultiTaskModel` whose features are ``{task: tensor}``; head ``t`` reads ``[t]``."""

    def head_input(self, features: Features, task: str) -> Tensor:
        if not isinstance(features, dict):
            raise TypeError(f"{type(self).__name__}: features must be a dict of per-task tensors")
        return features[task]

    @property
    def gate_weights(self) -> dict[str, Tensor]:
        """Gate weights recorded by the last forward, ``{gate: (batch, n_choices)}``, from every
        gated block of the model (empty for a model without gates)."""
        out: dict[str, Tensor] = {}
        for module in self.modules():
            if isinstance(module, Routed):
                out.update(module.last_gates)
        return out

    @property
    def gate_experts(self) -> dict[str, tuple[str, ...]]:
        """For each gate, the names of the experts its columns weight."""
        out: dict[str, tuple[str, ...]] = {}
        for module in self.modules():
            if isinstance(module, Routed):
                out.update(module.gate_experts)
        return out


def resolve_input(
    owner: str, in_features: int | None, input_layer: nn.Module | None
) -> tuple[nn.Module, int]:
    """The module applied to the raw input and its output width.

    ``input_layer`` (for example :class:`manytask.data.tabular.TabularInput`) must expose
    ``out_features``; without one the input is a ``(batch, in_features)`` tensor.
    """
    if input_layer is not None:
        width = getattr(input_layer, "out_features", None)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"{owner}: input_layer must expose a positive int out_features")
        if in_features is not None and in_features != width:
            raise ValueError(
                f"{owner}: in_features={in_features} disagrees with "
                f"input_layer.out_features={width}"
            )
        return input_layer, width
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"{owner}: give in_features (a positive int) or an input_layer")
    return nn.Identity(), in_features


def towers(
    owner: str, tasks: Sequence[Task], in_features: int, hidden: Sequence[int], dropout: float = 0.0
) -> dict[str, nn.Module]:
    """One MLP tower per task, ``in_features -> hidden... -> task.out_features`` (no last ReLU)."""
    check_sizes(owner, "tower_hidden", hidden, allow_empty=True)
    names = [t.name for t in tasks]
    if not names:
        raise ValueError(f"{owner}: needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: task names must be unique, got {names}")
    return {
        t.name: mlp([in_features, *hidden, t.out_features], dropout=dropout, last_activation=False)
        for t in tasks
    }
