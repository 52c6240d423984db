"""Hard parameter sharing (Caruana, 1997): one shared trunk, one small head per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..tasks import Task
from .base import MultiTaskModel, mlp


class HardSharing(MultiTaskModel):
    """A shared MLP trunk (or any given ``trunk`` module) and per-task MLP heads.

    Args:
        tasks: the tasks; each gets a head ending in ``task.out_features`` outputs.
        in_features: input width of the MLP trunk (ignored when ``trunk`` is given).
        hidden: widths of the trunk's hidden layers; the last one is the feature width.
        head_hidden: widths of each head's hidden layers (none: a linear head).
        trunk: a ready shared module; then ``feature_dim`` must give its output width.
        dropout: dropout after each hidden layer of the trunk.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        hidden: Sequence[int] = (256, 256),
        head_hidden: Sequence[int] = (),
        *,
        trunk: nn.Module | None = None,
        feature_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        if trunk is None:
            if in_features is None or not hidden:
                raise ValueError("HardSharing needs in_features and at least one hidden width")
            trunk = mlp([in_features, *hidden], dropout=dropout)
            feature_dim = hidden[-1]
        elif feature_dim is None:
            raise ValueError("HardSharing with a custom trunk needs feature_dim")
        heads = {
            t.name: mlp([feature_dim, *head_hidden, t.out_features], last_activation=False)
            for t in tasks
        }
        super().__init__(trunk, heads)
