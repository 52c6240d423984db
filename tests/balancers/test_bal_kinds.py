"""Typed method kinds: every registered method is of exactly one kind, which sets what it
sees (``requires``) and how the engine applies its decision (``weights_losses``)."""

from __future__ import annotations

import inspect

import pytest

from manytask.balancers import (
    GramianLossWeighting,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
    available,
    make_balancer,
)
from manytask.balancers.registry import get

KINDS = {
    LossWeighting: ("losses", True, 2),
    GramianWeighting: ("gramian", False, 3),
    GramianLossWeighting: ("gramian", True, 3),
    JacobianAggregator: ("jacobian", False, 3),
}


@pytest.mark.parametrize("name", sorted(set(available()) - {"periodic"}))
def test_every_method_has_one_kind(name: str) -> None:
    cls = get(name)
    kinds = [k for k in KINDS if issubclass(cls, k)]
    assert len(kinds) == 1, f"{name}: kinds {kinds}"
    requires, weights_losses, arity = KINDS[kinds[0]]
    assert (cls.requires, cls.weights_losses) == (requires, weights_losses)
    params = inspect.signature(cls.decide).parameters
    assert len(params) - 1 == arity  # self, losses, tasks[, gramian | jacobian]


def test_gradnorm_and_dbmtl_are_loss_weightings_driven_by_the_gramian() -> None:
    assert {n for n in available() if issubclass(get(n), GramianLossWeighting)} == {
        "dbmtl",
        "gradnorm",
    }


def test_setup_allocates_declared_state_once() -> None:
    method = make_balancer("dwa", tasks=["a", "b"])
    assert method.state_dict()["mean_prev"].shape == (2,)
    assert method.state_dict()["epochs"].shape == ()
    method.setup(["a", "b"])  # same names: a no-op
    with pytest.raises(ValueError, match="set up for tasks"):
        method.setup(["a", "c"])
    assert make_balancer("gradvac", tasks=["a", "b", "c"]).state_dict()["phi_hat"].shape == (3, 3)
