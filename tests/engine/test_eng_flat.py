"""Task-based flat regions: rho = 0 is the plain method, exact perturbations and restoration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import manytask
from manytask.balancers import make_balancer
from manytask.engine.flat import flat_backward

NAMES = ("a", "b")


def _setup() -> tuple[nn.Module, dict[str, nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    shared: nn.Module = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    heads: dict[str, nn.Module] = {n: nn.Linear(4, 1) for n in NAMES}
    x = torch.randn(6, 3)
    return shared, heads, x


def _closure(shared: nn.Module, heads: dict[str, nn.Module], x: torch.Tensor, log: list):
    def compute():
        log.append([p.detach().clone() for p in shared.parameters()])
        z = shared(x)
        return {n: ((heads[n](z) - i) ** 2).mean() for i, n in enumerate(NAMES)}, z

    return compute


def _grads(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters()]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["upgrad", "mgda", "imtl_g"])
def test_rho_zero_equals_plain_backward(name: str) -> None:
    shared, heads, x = _setup()
    flat_backward(_closure(shared, heads, x, []), make_balancer(name), shared.parameters(), rho=0.0)
    got = _grads([shared, *heads.values()])
    for m in [shared, *heads.values()]:
        m.zero_grad(set_to_none=True)
    losses, z = _closure(shared, heads, x, [])()
    manytask.backward(losses, make_balancer(name), features=z, shared_params=shared.parameters())
    for g, e in zip(got, _grads([shared, *heads.values()]), strict=True):
        assert torch.allclose(g, e, atol=1e-6)


def test_perturbation_direction_restoration_and_update() -> None:
    shared, heads, x = _setup()
    before = [p.detach().clone() for p in shared.parameters()]
    log: list = []
    rho = 0.3
    flat_backward(
        _closure(shared, heads, x, log), make_balancer("upgrad"), shared.parameters(), rho=rho
    )
    assert all(torch.equal(p, b) for p, b in zip(shared.parameters(), before, strict=True))
    assert len(log) == 1 + len(NAMES)
    # Independent reference: per-task gradients at theta by separate autograd calls.
    losses, _ = _closure(shared, heads, x, [])()
    params = list(shared.parameters())
    J = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(losses[n], params, retain_graph=True)]
            )
            for n in NAMES
        ]
    ).double()
    H = []
    for k, n in enumerate(NAMES):
        eps = torch.cat([(a - b).reshape(-1) for a, b in zip(log[1 + k], before, strict=True)])
        expected = rho * J[k] / J[k].norm()
        assert torch.allclose(eps.double(), expected, atol=1e-6)  # eps_k = rho g_k / ||g_k||
        # g_k^SAM at the perturbed point, by hand.
        with torch.no_grad():
            for p, value in zip(params, log[1 + k], strict=True):
                p.copy_(value)
        pert, _ = _closure(shared, heads, x, [])()
        sam = torch.cat([g.reshape(-1) for g in torch.autograd.grad(pert[n], params)]).double()
        H.append(sam - J[k])
        with torch.no_grad():
            for p, value in zip(params, before, strict=True):
                p.copy_(value)
    Hm = torch.stack(H)
    up = make_balancer("upgrad")
    up.setup(NAMES)
    w = up.decide(torch.ones(2), NAMES, J @ J.T).weights
    v = up.decide(torch.ones(2), NAMES, Hm @ Hm.T).weights
    got = torch.cat([p.grad.reshape(-1) for p in params]).double()  # type: ignore[union-attr]
    assert torch.allclose(got, w @ J + v @ Hm, atol=1e-5)


def test_invalid_arguments() -> None:
    shared, heads, x = _setup()
    closure = _closure(shared, heads, x, [])
    with pytest.raises(ValueError, match="rho"):
        flat_backward(closure, make_balancer("upgrad"), shared.parameters(), rho=-1.0)
    with pytest.raises(ValueError, match="gradient-level"):
        flat_backward(closure, make_balancer("equal"), shared.parameters())
