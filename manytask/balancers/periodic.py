"""Recompute a gradient-level method's coefficients only every N steps, and reuse them between.

An engine schedule: ``method.recompute_every(10)`` on any gradient-level method (a Gramian
weighting, a Gramian-driven loss weighting or a Jacobian aggregator), or, by name,
``make_balancer("periodic", base="upgrad", every=10)``. On a *compute* step (steps 0, N, 2N,
... counted by the schedule) the engine runs the method as usual: per-task gradients, the
decision, its application. On the N - 1 *reuse* steps in between the engine computes **no**
task gradient at all: it backpropagates ``sum_k w_k L_k`` with the weights of the last compute
step, one ordinary backward, the cost of a loss weighting.

Cost per N steps: one step of the method and N - 1 plain backwards; so the overhead over equal
weighting is divided by about N.

Differences on reuse steps, by construction:

* The heads receive the *weighted* gradient ``w_k dL_k/dtheta_k`` (one backward of the weighted
  sum cannot give each head its own unweighted gradient). Pass ``head_grad="weighted"`` to
  :func:`manytask.backward` to get the same convention on compute steps too; weights of methods
  that use the *mean* convention (UPGrad, DualProj, ...) then shrink the heads' gradients by
  about 1/K.
* The method is not called, so its state (EMA targets, learnable scales) does not move.
* A task present now but absent at every compute step so far has no stored weight; it gets the
  mean of the stored weights of the other present tasks (1 if none has one).

State (saved in the method's state dict under ``schedule.``): the step counter and the last
weight of every task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor

from ..registry import Param, did_you_mean
from .base import (
    Balancer,
    Decision,
    GramianLossWeighting,
    GramianWeighting,
    JacobianAggregator,
    Requirement,
)
from .registry import BALANCERS, build, register
from .schedule import EverySteps


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
    """A gradient-level method under the :class:`EverySteps` schedule, chosen by name.

    Of the kind of its ``base`` (the engine reads ``requires`` and ``weights_losses``, copied
    from it); it decides as the base does.
    """

    name = "periodic"
    requires: Requirement = "gramian"  # for listings; an instance takes its base's kind
    params: ClassVar[dict[str, Param]] = {
        "base": Param("any", "upgrad", "the gradient-level method whose weights are reused (a "
                      "name or a Balancer)", check=_base_check),
        "every": Param("int", 10, "compute the weights every N steps", low=1),
        "base_params": Param("any", None, "parameters of base, when base is a name",
                             nullable=True, check=_params_check),
    }

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
        else:
            raise TypeError(f"periodic: base must be a balancer name or a Balancer, got {base!r}")
        if inner.requires == "losses" or isinstance(inner, Periodic):
            raise ValueError(
                f"periodic: base must be a gradient-level method, got {inner.name!r} "
                f"(requires {inner.requires!r})"
            )
        self.inner: Balancer = inner
        self.base = inner.name
        self.every = every
        # Rebuildable from hparams() either way: a given instance contributes its own.
        self.base_params = dict(base_params or {}) if isinstance(base, str) else inner.hparams()
        self.requires = inner.requires
        self.weights_losses = inner.weights_losses
        self.schedule = EverySteps(every)

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.inner.setup(task_names)

    def decide(self, losses: Tensor, tasks: Sequence[str], info: Tensor) -> Decision:
        """The base's decision; ``info`` is the Gramian or the Jacobian, as its kind needs."""
        inner = self.inner
        if isinstance(inner, GramianWeighting | GramianLossWeighting | JacobianAggregator):
            return inner.decide(losses, tasks, info)
        raise TypeError(f"periodic: base {inner.name!r} is of no gradient-level kind")
