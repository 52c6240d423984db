"""The new Gramian-based methods through ``manytask.backward``: exact and feature level agree
where they must (features equal to the shared parameters), and absent tasks are handled."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask.balancers import Periodic, make_balancer

METHODS: list[tuple[str, dict[str, object]]] = [
    ("gradvac", {}),
    ("imtl", {}),
    ("periodic", {"base": "upgrad", "every": 2}),
    ("periodic", {"base": "cagrad", "every": 3, "base_params": {"c": 0.5}}),
]


def _run(name: str, params: dict, mode: str, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(5))
    heads = [torch.randn(5) for _ in range(3)]
    method = make_balancer(name, **params)
    grads: list[torch.Tensor] = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same random draws (GradVac's order) in both modes
        theta.grad = None
        z = theta * 1.0  # features equal to the parameter: both Jacobians coincide
        losses = {f"t{i}": ((z * h).sum() - i - step) ** 2 for i, h in enumerate(heads)}
        manytask.backward(losses, method, features=z, shared_params=[theta], mode=mode)  # type: ignore[arg-type]
        assert theta.grad is not None
        grads.append(theta.grad.clone())
    return grads


@pytest.mark.parametrize(("name", "params"), METHODS)
def test_exact_equals_feature(name: str, params: dict) -> None:
    for a, b in zip(_run(name, params, "exact"), _run(name, params, "feature"), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "params"), METHODS)
def test_absent_task(name: str, params: dict) -> None:
    theta = torch.nn.Parameter(torch.randn(4))
    method = make_balancer(name, **params)
    method.setup(["a", "b", "c"])
    for present in (("a", "b", "c"), ("a", "c"), ("b",)):
        z = theta * 1.0
        losses = {t: ((z - i) ** 2).sum() for i, t in enumerate(present)}
        res = manytask.backward(losses, method, features=z, shared_params=[theta])
        assert set(res.weights) == set(present)
        assert all(torch.isfinite(torch.tensor(list(res.weights.values()))))


def test_periodic_takes_the_kind_of_its_base() -> None:
    # Read on the class (as `manytask methods` does), requires is a plain string.
    assert Periodic.requires == "gramian" and isinstance(Periodic.requires, str)
    assert make_balancer("periodic", base="upgrad").weights_losses is False
    gradnorm = make_balancer("periodic", base="gradnorm")
    assert gradnorm.requires == "gramian" and gradnorm.weights_losses is True
    assert make_balancer("periodic", base="graddrop").requires == "jacobian"
