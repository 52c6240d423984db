"""The adapter layer: frozen base modules of any Hugging Face model, with an increment added.

A targeted module (``nn.Linear``, or ``transformers``' ``Conv1D`` of GPT-2, whose weight is
stored transposed) is wrapped in :class:`AdaptedLayer`: ``y = base(x) + delta(x, y, ctx)``.
``delta`` is a method's per-layer module; ``ctx`` (:class:`Context`) carries what the model's
forward knows about each example (its task, language, instance cluster, token mask) and
collects auxiliary losses. Targets are chosen by name as PEFT's ``target_modules`` chooses
them: a list of names matches a module whose full name equals one of them or ends with
``"." + name`` (plain string comparison, no regular expression); a single string is a regular
expression that must match the whole name (``re.fullmatch``), compiled once. As the pattern may
come from a saved adapter's file, it is matched by the ``regex`` engine (the same syntax and
meaning as ``re``) under a time limit: a pattern that backtracks exponentially (``(a*)*b``) is
refused by name instead of stalling the program.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

MAX_PATTERN = 500  # characters: a user's pattern is compiled once, never built up from names
MATCH_SECONDS = 0.5  # one module name against the pattern: microseconds unless it backtracks


@dataclass
class Context:
    """Per-example information for one forward pass, set by the model before the base runs.

    ``tasks`` (B,) task indices; ``languages`` (B,) language indices (Hyper-X); ``intuition``
    (B, d) instance-cluster embeddings (MoR1E); ``mask`` (B, L) real tokens; ``losses``
    collects the auxiliary losses the layers add during the pass, by name (one term per
    adapted layer, see :meth:`add_loss`).
    """

    tasks: Tensor
    mask: Tensor
    languages: Tensor | None = None
    intuition: Tensor | None = None
    losses: dict[str, list[Tensor]] = field(default_factory=dict)
    representations: dict[str, Tensor] = field(default_factory=dict)

    def add_loss(self, name: str, value: Tensor) -> None:
        """One adapted layer's term of the auxiliary loss ``name`` (summed over layers)."""
        self.losses.setdefault(name, []).append(value)


class ContextHolder:
    """The one mutable slot the model's forward fills and every adapted layer reads."""

    def __init__(self) -> None:
        self.current: Context | None = None

    def get(self, where: str) -> Context:
        if self.current is None:
            raise RuntimeError(f"{where}: no task context; call the adapter model (or "
                               "AdaptedBase.forward) with task_ids, not the base model alone")
        return self.current


def is_conv1d(module: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D`` (GPT-2): weight (in, out), ``y = x W + b``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        weight: Any = module.weight
        return int(weight.shape[0]), int(weight.shape[1])
    raise TypeError(f"cannot adapt a {type(module).__name__}: only nn.Linear and "
                    "transformers' Conv1D are supported")


def dense_weight(module: nn.Module) -> Tensor:
    """The module's weight as (out, in), whichever way it is stored."""
    weight: Any = module.weight
    return weight.t() if is_conv1d(module) else weight


def matches(name: str, targets: str | Sequence[str]) -> bool:
    """Whether module ``name`` is targeted, as PEFT decides (see the module docstring)."""
    if isinstance(targets, str):
        import regex  # an extra of adapters (transformers needs it): matching with a timeout

        try:
            return regex.fullmatch(targets, name, timeout=MATCH_SECONDS) is not None
        except TimeoutError:
            raise ValueError(f"target_modules: the pattern {targets[:80]!r} takes over "
                             f"{MATCH_SECONDS} s to match the module name {name!r} "
                             "(exponential backtracking); refused") from None
    return any(name == t or name.endswith("." + t) for t in targets)


def check_targets(targets: object) -> str | list[str]:
    if isinstance(targets, str):
        if not targets or len(targets) > MAX_PATTERN:
            raise ValueError(f"target_modules: a pattern must have 1 to {MAX_PATTERN} "
                             f"characters, got {len(targets)}")
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"target_modules: {targets!r} is not a regular expression: "
                             f"{err}") from None
        return targets
    if (not isinstance(targets, Sequence) or not targets
            or not all(isinstance(t, str) and t for t in targets)):
        raise ValueError(f"target_modules must be a non-empty list of module names or one "
                         f"pattern, got {targets!r}")
    return list(targets)


class AdaptedLayer(nn.Module):
    """``base(x) + delta(x, base(x), ctx)``; the base module is frozen and left in place."""

    def __init__(self, base: nn.Module, delta: nn.Module, holder: ContextHolder,
                 name: str) -> None:
        super().__init__()
        self.base_layer = base
        self.delta = delta
        self.holder = holder
        self.path = name
        self.active = True

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        y: Tensor = self.base_layer(x, *args, **kwargs)
        if not self.active:
            return y
        ctx = self.holder.get(self.path)
        change: Tensor = self.delta(x, y, ctx)
        return y + change.to(y.dtype)


def delta_of(layer: AdaptedLayer) -> Any:
    """``layer.delta`` untyped: each method knows its own increment's attributes."""
    return layer.delta


def inject(model: nn.Module, targets: str | Sequence[str], make: object,
           holder: ContextHolder) -> dict[str, AdaptedLayer]:
    """Replace every targeted module of ``model`` by an :class:`AdaptedLayer` whose delta is
    ``make(name, module)``; freeze all of ``model``'s own parameters first. Returns the layers
    by module name. Raises ``ValueError`` when nothing matches (a misspelt target)."""
    targets = check_targets(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [(n, m) for n, m in model.named_modules()
              if n and matches(n, targets) and not isinstance(m, AdaptedLayer)]
    if not chosen:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ValueError(f"target_modules {targets!r} match no module of "
                         f"{type(model).__name__}; linear modules include {linear}")
    layers: dict[str, AdaptedLayer] = {}
    for _, module in chosen:
        in_out(module)  # refuses an unsupported type before anything is replaced
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        delta = make(name, module)  # type: ignore[operator]
        layer = AdaptedLayer(module, delta, holder, name)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


def gated_lowrank(x: Tensor, a: Tensor, b: Tensor, gate: Tensor | None) -> Tensor:
    """``((x A^T) * gate) B^T`` for x (B, L, in), A (R, in), B (out, R), gate (B, R).

    Every routed LoRA here (one per task, MoA, MoR1E, ScaLearn's scalar scaling) is one LoRA
    of total rank R whose rank components are switched or weighted per example: so it costs
    one shared LoRA of rank R plus an elementwise product.
    """
    u = x.to(a.dtype) @ a.t()
    if gate is not None:
        u = u * gate.to(u.dtype).reshape(gate.shape[0], *([1] * (u.dim() - 2)), gate.shape[1])
    return u @ b.t()


def masked_mean(u: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``u`` (B, L, d) over the real tokens of ``mask`` (B, L) -> (B, d)."""
    if u.dim() == 2:
        return u
    w = mask[:, : u.shape[1]].to(u.dtype).unsqueeze(-1)
    return (u * w).sum(1) / w.sum(1).clamp_min(1.0)


def kaiming_rows(rows: int, cols: int) -> Tensor:
    """A (rows, cols) matrix initialised as ``nn.Linear`` initialises its weight (LoRA's A)."""
    weight = torch.empty(rows, cols)
    nn.init.kaiming_uniform_(weight, a=5**0.5)
    return weight
