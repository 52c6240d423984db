"""The balancers through ``manytask.backward``: applied gradients, absent tasks, both modes."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import model_losses, small_model
from grad_helpers import per_task_grads
from torch import nn

import manytask
from manytask.balancers import make_balancer
from manytask.engine.gradients import Mode

GRADIENT_LEVEL: list[tuple[str, dict[str, object]]] = [
    ("mgda", {}),
    ("pcgrad", {"shuffle": False}),
    ("cagrad", {"c": 0.5}),
    ("upgrad", {}),
    ("dualproj", {}),
    ("imtl_g", {}),
    ("aligned_mtl", {}),
    ("nash_mtl", {"update_weights_every": 2}),
    ("config", {}),
    ("fairgrad", {"alpha": 2.0}),
]
NAMES = ("a", "b", "c")


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@pytest.mark.parametrize(("name", "params"), GRADIENT_LEVEL)
@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_shared_grad_is_weighted_sum(name: str, params: dict, mode: Mode) -> None:
    model = small_model(NAMES)
    shared = list(model.shared_parameters())
    losses, feats = model_losses(model, NAMES)
    # Independent reference: per-task gradients by separate autograd calls.
    J = per_task_grads(losses, shared)
    Jz = torch.stack(
        [torch.autograd.grad(v, feats, retain_graph=True)[0].reshape(-1) for v in losses.values()]
    ).double()
    gram = J @ J.T if mode == "exact" else Jz @ Jz.T
    reference = make_balancer(name, **params)
    reference.setup(NAMES)
    expected_w = reference.decide(torch.stack(list(losses.values())), NAMES, gram).weights
    head_grads = {
        n: torch.autograd.grad(losses[n], list(model.heads[n].parameters()), retain_graph=True)
        for n in NAMES
    }

    method = make_balancer(name, **params)
    result = manytask.backward(losses, method, features=feats, shared_params=shared, mode=mode)
    w = torch.tensor([result.weights[n] for n in NAMES], dtype=torch.float64)
    assert torch.allclose(w, expected_w, rtol=1e-6, atol=1e-9)
    got = torch.cat([_grad(p).reshape(-1) for p in shared]).double()
    assert torch.allclose(got, w @ J, rtol=1e-5, atol=1e-6)
    for n in NAMES:  # heads get their own task's unweighted gradient
        for p, g in zip(model.heads[n].parameters(), head_grads[n], strict=True):
            assert torch.allclose(_grad(p), g, atol=1e-6)


class _Identity(nn.Module):
    """Features equal to the shared parameter: the feature and exact Jacobians coincide."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(6))

    def forward(self) -> torch.Tensor:
        return self.theta * 1.0


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad", "gradnorm", "upgrad", "nash_mtl"])
def test_exact_and_feature_modes_agree_when_they_must(name: str) -> None:
    grads, grams = [], []
    modes: tuple[Mode, ...] = ("exact", "feature")
    for mode in modes:
        torch.manual_seed(0)
        shared = _Identity()
        heads = nn.ModuleList([nn.Linear(6, 2) for _ in NAMES])
        z = shared()
        x = torch.randn(2)
        losses = {
            n: ((h(z) - x) ** 2).sum() * (i + 1)
            for i, (n, h) in enumerate(zip(NAMES, heads, strict=True))
        }
        method = make_balancer(name, **({"shuffle": False} if name == "pcgrad" else {}))
        result = manytask.backward(
            losses, method, features=z, shared_params=shared.parameters(), mode=mode
        )
        assert result.gramian is not None
        grams.append(result.gramian)
        grads.append(
            torch.cat(
                [_grad(shared.theta).reshape(-1)]
                + [_grad(p).reshape(-1) for p in heads.parameters()]
            )
        )
    assert torch.allclose(grams[0], grams[1], rtol=1e-10)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "params"), [*GRADIENT_LEVEL, ("gradnorm", {}), ("uncertainty", {}), ("dwa", {})]
)
def test_absent_task(name: str, params: dict) -> None:
    model = small_model(NAMES)
    shared = list(model.shared_parameters())
    method = make_balancer(name, **params)
    method.setup(NAMES)
    state_before = {k: v.clone() for k, v in method.state_dict().items()}
    losses, feats = model_losses(model, NAMES)
    present = {"c": losses["c"], "a": losses["a"]}
    result = manytask.backward(present, method, features=feats, shared_params=shared)
    grad_three = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    # The absent task's state is untouched.
    after = method.state_dict()
    for key, before in state_before.items():
        if before.dim() >= 1 and before.shape[0] == 3:
            assert torch.equal(after[key][1], before[1]) or (
                before[1].isnan() and after[key][1].isnan()
            )
        elif key.startswith("log_vars.1"):
            assert torch.equal(after[key], before)
    # Same result as the method set up with the two present tasks alone.
    _zero_grads(model)
    alone = make_balancer(name, **params)
    alone.setup(("c", "a"))
    losses, feats = model_losses(model, NAMES)
    result2 = manytask.backward(
        {"c": losses["c"], "a": losses["a"]}, alone, features=feats, shared_params=shared
    )
    assert result.weights == pytest.approx(result2.weights, rel=1e-9)
    grad_two = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b) for a, b in zip(grad_three, grad_two, strict=True))
