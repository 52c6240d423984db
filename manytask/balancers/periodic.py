"""Recompute a gradient-level method's coefficients only every N steps, and reuse them between.

``make_balancer("periodic", base="upgrad", every=10)`` wraps any Gramian-based method. On a
*compute* step (steps 0, N, 2N, ... counted by this wrapper) it is exactly the wrapped method:
the engine computes the Gramian, the method decides, the shared part gets ``sum_k w_k g_k``.
On the N - 1 *reuse* steps in between it reports ``requires = "losses"``, so
:func:`manytask.backward` computes **no** task gradients at all: it backpropagates
``sum_k w_k L_k`` with the weights of the last compute step, one ordinary backward, the cost of
a loss-level method.

Cost per N steps: one step of the wrapped method (K head backwards plus, in exact mode, one
batched backward of the shared part, plus the solve) and N - 1 plain backwards; so the overhead
over equal weighting is divided by about N.

Differences on reuse steps, by construction:

* The heads receive the *weighted* gradient ``w_k dL_k/dtheta_k`` (one backward of the weighted
  sum cannot give each head its own unweighted gradient). Pass ``head_grad="weighted"`` to
  :func:`manytask.backward` to get the same convention on compute steps too; weights of methods
  that use the *mean* convention (UPGrad, DualProj, ...) then shrink the heads' gradients by
  about 1/K.
* The wrapped method is not called, so its state (EMA targets, learnable scales) does not move.
* A task present now but absent at every compute step so far has no stored weight; it gets the
  mean of the stored weights of the other present tasks (1 if none has one).

State (saved in the state dict, with the wrapped method's): the step counter and the last weight
of every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import Param, did_you_mean
from .base import Balancer, Decision
from .registry import BALANCERS, build, register


class _ByPhase:
    """``requires`` / ``applies_to_heads`` that depend on the step. Read on the class, the
    compute-step value (for listings); read on an instance, the value for its next call."""

    def __init__(self, on_compute: Callable[[Periodic | None], object], on_reuse: object) -> None:
        self.on_compute, self.on_reuse = on_compute, on_reuse

    def __get__(self, obj: Periodic | None, objtype: type | None = None) -> Any:
        if obj is None or not obj.task_names or obj.computing:
            return self.on_compute(obj)
        return self.on_reuse


def _inner(method: Periodic) -> Balancer:
    inner: Balancer = method.inner
    return inner


def _base_check(value: object) -> str | None:
    if isinstance(value, Balancer):
        return None
    if not isinstance(value, str):
        return "must be a balancer name or a Balancer"
    # the name's entry is looked up (and its parameters checked) when periodic is built
    if value in BALANCERS:
        return None
    hint = did_you_mean(value, BALANCERS.names())
    return f"is an unknown balancer{hint}; available: {', '.join(BALANCERS.names())}"


def _params_check(value: object) -> str | None:
    return None if isinstance(value, Mapping) else "must be a mapping of parameter names"


@register
class Periodic(Balancer):
    """Reuse a gradient-level method's weights for ``every - 1`` steps after each computation."""

    name = "periodic"
    # The engine reads these before each call, so on reuse steps it computes no task gradient.
    requires = _ByPhase(lambda _: "gramian", "losses")
    applies_to_heads = _ByPhase(lambda m: m is not None and _inner(m).applies_to_heads, False)
    params: ClassVar[dict[str, Param]] = {
        "base": Param("any", "upgrad", "the Gramian-based method whose weights are reused (a "
                      "name or a Balancer)", check=_base_check),
        "every": Param("int", 10, "compute the weights every N steps", low=1),
        "base_params": Param("any", None, "parameters of base, when base is a name",
                             nullable=True, check=_params_check),
    }
    step: Tensor
    stored: Tensor

    def __init__(
        self,
        base: str | Balancer = "upgrad",
        every: int = 10,
        base_params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base, str):
            inner = build(base, base_params)
        elif isinstance(base, Balancer):
            if base_params:
                raise ValueError("periodic: base_params is only used when base is a name")
            inner = base
        if type(inner).requires != "gramian":
            raise ValueError(
                f"periodic: base must be a Gramian-based method, got {inner.name!r} "
                f"(requires {type(inner).requires!r})"
            )
        self.inner: Balancer = inner
        self.base = inner.name
        self.every = every
        # Rebuildable from hparams() either way: a given instance contributes its own.
        self.base_params = dict(base_params or {}) if isinstance(base, str) else inner.hparams()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def computing(self) -> bool:
        """Whether the next call recomputes the weights."""
        step: Tensor = self.step
        return int(step) % int(self.every) == 0

    def setup(self, task_names: Sequence[str]) -> None:
        first = not self.task_names
        super().setup(task_names)
        self.inner.setup(task_names)
        if first:
            nan = torch.full((len(self.task_names),), float("nan"), dtype=torch.float64)
            self.register_buffer("stored", nan)

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor | None) -> Decision:
        idx = self.index(tasks).to(self.stored.device)
        computing = self.computing
        self.step += 1
        if computing:
            if gramian is None:
                raise ValueError(f"periodic({self.base}) needs the Gramian on a compute step")
            decision = self.inner.decide(losses, tasks, gramian)
            self.stored[idx] = decision.weights.detach().double().to(self.stored.device)
            return decision
        weights = self.stored[idx].cpu()
        known = torch.isfinite(weights)
        fill = weights[known].mean() if bool(known.any()) else torch.tensor(1.0).double()
        return Decision(weights=torch.where(known, weights, fill))
