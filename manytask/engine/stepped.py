"""A guard for the own-loop recipe: a method's parameters must be stepped with the model's.

Methods with learnable parameters (uncertainty weighting, IMTL-L, IMTL) get gradients from
:func:`manytask.backward`; they learn only if an optimizer steps them. A common mistake is an
optimizer built over the model's parameters alone: then the method's parameters keep their
initial values and their ``.grad`` accumulates forever. The guard: after each call the engine
records the version counters of the method's parameters that hold a gradient, and at the next
call, if some optimizer stepped in between (counted by a global step hook) and yet none of
those parameters changed, it raises one line saying what to do. Gradient accumulation
(several calls between two steps) is not affected: no optimizer stepped between those calls.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch.optim.optimizer import register_optimizer_step_post_hook

from ..balancers.base import Balancer

_steps = [0]  # optimizer steps taken in this process since the hook was installed
_recorded: weakref.WeakKeyDictionary[Balancer, tuple[int, list[int]]] = (
    weakref.WeakKeyDictionary()
)
_hook: list[Any] = []


def _count_step(*_: Any) -> None:
    _steps[0] += 1


def record_stepped(method: Balancer) -> None:
    """After a call: remember the versions of the method's parameters that have a gradient."""
    params = [p for p in method.parameters() if p.grad is not None]
    if not params:
        _recorded.pop(method, None)
        return
    if not _hook:
        _hook.append(register_optimizer_step_post_hook(_count_step))
    _recorded[method] = (_steps[0], [p._version for p in params])


def check_stepped(method: Balancer) -> None:
    """Before a call: raise if an optimizer stepped since the last call but not the method's
    parameters that had gradients then."""
    seen = _recorded.get(method)
    if seen is None:
        return
    steps, versions = seen
    params = [p for p in method.parameters() if p.grad is not None]
    if _steps[0] == steps or len(params) != len(versions):
        return  # no step since (accumulation), or the gradients were cleared
    if all(p._version == v for p, v in zip(params, versions, strict=True)):
        _recorded.pop(method, None)
        raise RuntimeError(
            f"{method.name}: its learnable parameters got gradients but an optimizer stepped "
            "without them; build the optimizer over the model's and the method's parameters "
            "(e.g. [*model.parameters(), *method.parameters()])"
        )
