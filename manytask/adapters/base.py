"""What every adapter method provides, and the registry they are chosen from by name."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param, Registry
from .layer import AdaptedLayer, Context

ADAPTERS: Registry[type[AdapterMethod]] = Registry("adapter")

RANK = Param("int", 8, "rank r of each low-rank factor pair", low=1)
ALPHA = Param("float", 16.0, "LoRA scaling numerator: the update is (alpha / r) B A", low=0,
              low_open=True)


def positive_int(value: Any, what: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {what} must be a positive integer, got {value!r}")
    return value


class AdapterMethod(nn.Module):
    """A parameter-efficient multi-task method on a frozen model.

    ``make(name, module)`` builds the per-layer increment of a targeted module (a module
    whose ``forward(x, y, ctx)`` returns what is added to the base output ``y``); methods
    without layers (prompts) return prompt vectors from :meth:`prompt` instead. Parameters
    (and buffers) whose name starts with ``task_`` belong to single tasks (or are a task's
    routing); the rest are shared, and are what balancers see as the shared part.
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {
              }
    uses_layers: ClassVar[bool] = True

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.n_tasks = positive_int(n_tasks, "n_tasks", type(self).__name__)
        self.layers: dict[str, AdaptedLayer] = {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments, for saving (JSON-serialisable)."""
        return {k: getattr(self, k) for k in self.params}

    def auxiliary_names(self) -> tuple[str, ...]:
        """The auxiliary losses this method adds to the objective in training (their
        weights are its declared parameters); none by default."""
        return ()

    def setup(self, base: nn.Module) -> None:
        """Called once with the frozen base model before any layer is made."""

    def make(self, name: str, module: nn.Module) -> nn.Module:
        raise TypeError(f"{self.name} adapts no layer")

    def prompt(self, ctx: Context) -> Tensor | None:
        """Soft prompt vectors (B, l, d) to prepend to the input embeddings, or ``None``."""
        return None

    def fold(self, layer: AdaptedLayer, task: int) -> Tensor:
        """The weight change (out, in) that ``layer``'s increment equals for examples of
        ``task``; raises ``TypeError`` where no such fixed matrix exists."""
        raise TypeError(f"{self.name} cannot be folded into the base weights: its increment "
                        "is not a fixed linear map of the layer input")


def task_onehot(tasks: Tensor, n_tasks: int, repeat: int, dtype: torch.dtype) -> Tensor:
    """(B, n_tasks * repeat): each example's task block of ``repeat`` ones."""
    if tasks.dim() != 1:
        raise ValueError(f"task_ids must be one index per example, got shape "
                         f"{tuple(tasks.shape)}")
    if tasks.numel() and (int(tasks.min()) < 0 or int(tasks.max()) >= n_tasks):
        raise ValueError(f"task_ids must lie in [0, {n_tasks}), got {tasks.min()}..{tasks.max()}")
    onehot = nn.functional.one_hot(tasks.long(), n_tasks).to(dtype)
    return onehot.repeat_interleave(repeat, dim=1) if repeat > 1 else onehot
