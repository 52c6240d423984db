"""The multi-task model contract: a shared part, per-task heads, and features on request."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..tasks import Task

Features = Tensor | tuple[Tensor, ...] | dict[str, Tensor]


class MultiTaskModel(nn.Module):
    """A shared part and one head per task.

    ``forward(x)`` returns ``{task: output}``; ``forward(x, return_features=True)`` returns
    ``(outputs, features)`` where ``features`` is what the heads read. The losses must depend
    on the shared parameters only through ``features``: that is what lets gradient-balancing
    methods get every task's gradient from one batched backward (see
    :mod:`manytask.engine.gradients`).

    Subclasses whose heads read per-task features (PLE, cross-stitch, ...) override
    :meth:`head_input`. Models whose method adds a term of its own to the objective (an
    adapter's alignment or routing loss) override :meth:`auxiliary_loss_names` and
    :meth:`auxiliary_losses`; the Trainer adds those terms outside the task balancing.
    """

    def __init__(self, shared: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a multi-task model needs at least one head")
        self.shared = shared
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def features(self, x: Any) -> Features:
        features: Features = self.shared(x)
        return features

    def head_input(self, features: Features, task: str) -> Any:
        return features

    def heads_forward(self, features: Features) -> dict[str, Tensor]:
        return {t: head(self.head_input(features, t)) for t, head in self.heads.items()}

    def forward(self, x: Any, return_features: bool = False) -> Any:
        feats = self.features(x)
        outputs = self.heads_forward(feats)
        return (outputs, feats) if return_features else outputs

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.shared.parameters()

    def auxiliary_loss_names(self) -> tuple[str, ...]:
        """The names of the auxiliary losses each training forward computes (none here)."""
        return ()

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """The auxiliary losses of the last training forward by name, each a scalar already
        multiplied by its weight, to be added to the objective as they are; taking them
        clears them. ``{}`` for a model without any."""
        return {}

    def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Raise ``ValueError`` if the heads do not match ``tasks`` one for one."""
        names = [t.name for t in tasks]
        missing = [n for n in names if n not in self.heads]
        extra = [n for n in self.heads if n not in names]
        if missing or extra:
            raise ValueError(
                f"model heads {list(self.heads)} do not match tasks {names}"
                + (f"; no head for {missing}" if missing else "")
                + (f"; head(s) {extra} have no task" if extra else "")
            )


def mlp(
    sizes: Sequence[int], *, dropout: float = 0.0, last_activation: bool = True
) -> nn.Sequential:
    """A ReLU multi-layer perceptron through ``sizes`` (``[in, hidden..., out]``)."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
