"""The own-loop recipe for every method: build it with its tasks, give the optimizer the
model's and the method's parameters, loop. And the guard when the method's are left out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import manytask
from manytask.balancers import available, make_balancer

NAMES = ("a", "b", "c")
LEARNABLE = ("uncertainty", "imtl_l", "imtl")
NEEDS = {"fixed": {}, "periodic": {"base": "mgda"}}


def _model() -> tuple[nn.Module, nn.ModuleDict]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.ModuleDict(
        {n: nn.Linear(6, 1) for n in NAMES}
    )


def _losses(shared: nn.Module, heads: nn.ModuleDict, step: int):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=gen)
    z = shared(x)
    return {n: ((heads[n](z) - i) ** 2).mean() * (i + 1) for i, n in enumerate(NAMES)}, z


@pytest.mark.parametrize("name", LEARNABLE)
def test_learnable_parameters_exist_at_construction(name: str) -> None:
    method = make_balancer(name, tasks=NAMES)
    params = list(method.parameters())
    assert len(params) == len(NAMES) and all(p.requires_grad for p in params)
    assert make_balancer(name).task_names == ()  # without tasks: created by setup()


@pytest.mark.parametrize("name", available())
def test_plain_loop_trains_every_method(name: str) -> None:
    shared, heads = _model()
    method = make_balancer(name, tasks=NAMES, **NEEDS.get(name, {}))
    own = [p.detach().clone() for p in method.parameters()]
    optimizer = torch.optim.SGD([*shared.parameters(), *heads.parameters(),
                                 *method.parameters()], lr=0.05)
    for step in range(4):
        losses, z = _losses(shared, heads, step)
        optimizer.zero_grad()
        manytask.backward(losses, method, features=z, shared_params=shared.parameters())
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in shared.parameters())
    if name in LEARNABLE:  # the method's own parameters moved with the model's
        assert any(not torch.equal(p, q) for p, q in zip(method.parameters(), own, strict=True))


@pytest.mark.parametrize("name", LEARNABLE)
def test_optimizer_without_the_methods_parameters_is_refused(name: str) -> None:
    shared, heads = _model()
    method = make_balancer(name, tasks=NAMES)
    optimizer = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=0.05)
    losses, z = _losses(shared, heads, 0)
    manytask.backward(losses, method, features=z, shared_params=shared.parameters())
    optimizer.step()
    optimizer.zero_grad()
    losses, z = _losses(shared, heads, 1)
    with pytest.raises(RuntimeError, match=f"^{name}: .*optimizer stepped without them"):
        manytask.backward(losses, method, features=z, shared_params=shared.parameters())


def test_accumulation_and_zero_learning_rate_are_not_refused() -> None:
    shared, heads = _model()
    method = make_balancer("uncertainty", tasks=NAMES)
    optimizer = torch.optim.Adam([*shared.parameters(), *heads.parameters(),
                                  *method.parameters()], lr=0.0)
    for _ in range(3):
        for micro in range(2):  # two backward calls per step: gradients accumulate
            losses, _ = _losses(shared, heads, micro)
            manytask.backward(losses, method)
        optimizer.step()  # lr 0 (a warm-up's first step): values unchanged, still stepped
        optimizer.zero_grad(set_to_none=False)


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "famo", "gradvac", "nash_mtl", "moco"])
def test_declared_state_round_trips_through_a_state_dict(name: str) -> None:
    method = make_balancer(name, tasks=NAMES)
    state = method.state_dict()
    assert state, "declared state is allocated and saved"
    with torch.no_grad():
        for value in state.values():
            if value.is_floating_point():
                value.copy_(torch.arange(value.numel(), dtype=value.dtype).reshape(value.shape))
    other = make_balancer(name, tasks=NAMES)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
