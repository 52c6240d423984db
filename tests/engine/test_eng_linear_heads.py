"""The linear-head identity: Gramian (R^T R) * (W W^T) and combination (R diag(w)) W against
per-task feature gradients taken one by one; fallback wherever a head is not linear."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import manytask
from manytask.engine.linear_heads import linear_heads


def _setup(heads: dict[str, nn.Module]):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
    x = torch.randn(7, 3)
    z = trunk(x)
    outs = {n: h(z) for n, h in heads.items()}
    losses = {n: (o ** 2).mean() * (i + 1) + o.sum() * 0.1
              for i, (n, o) in enumerate(outs.items())}
    return trunk, z, losses


def _per_task(losses, z):
    return torch.stack([torch.autograd.grad(v, z, retain_graph=True)[0] for v in losses.values()])


def test_identity_matches_per_task_gradients() -> None:
    torch.manual_seed(1)
    heads = {"a": nn.Linear(5, 1), "b": nn.Linear(5, 3), "c": nn.Linear(5, 2, bias=False)}
    _, z, losses = _setup(heads)
    g = _per_task(losses, z).double()
    fast = linear_heads(list(losses.values()), [z])
    assert fast is not None
    flat = g.reshape(3, -1)
    assert torch.allclose(fast.gramian(), flat @ flat.T, rtol=1e-5, atol=1e-10)
    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    assert torch.allclose(fast.combine(w).double(), torch.tensordot(w, g, dims=1), atol=1e-6)
    for k, (name, head) in enumerate(heads.items()):
        own = torch.autograd.grad(losses[name], list(head.parameters()), retain_graph=True)
        got = dict((id(p), gp) for p, gp in fast.head_grads[k])
        for p, e in zip(head.parameters(), own, strict=True):
            assert torch.allclose(got[id(p)], e, atol=1e-6)


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 1)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z) * self.scale


@pytest.mark.parametrize("other", [
    lambda: nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1)),  # two layers
    Scaled,  # another parameter in the head
    lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 1)),  # reads dropped features
])
def test_other_heads_fall_back(other) -> None:
    _, z, losses = _setup({"a": nn.Linear(5, 1), "b": other()})
    assert linear_heads(list(losses.values()), [z]) is None


class ComputedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 5))
        self.bias = nn.Parameter(torch.randn(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(z, self.weight, self.bias * 2.0)


def _frozen_bias() -> nn.Module:
    head = nn.Linear(5, 1)
    head.bias.requires_grad_(False)
    return head


@pytest.mark.parametrize("other", [ComputedBias, _frozen_bias])
def test_heads_whose_bias_is_not_a_trained_leaf_fall_back(other) -> None:
    _, z, losses = _setup({"a": nn.Linear(5, 1), "b": other()})
    assert linear_heads(list(losses.values()), [z]) is None


def test_a_head_tied_to_a_trunk_weight_falls_back() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    z = trunk(torch.randn(7, 5))
    own = nn.Linear(5, 1)
    losses = [own(z).pow(2).mean(), nn.functional.linear(z, trunk[0].weight).pow(2).mean()]
    assert linear_heads(losses, [z]) is None


def test_a_loss_reading_the_trunk_elsewhere_falls_back() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    hidden = trunk[0](torch.randn(7, 5))
    z = trunk[1](hidden)
    head_a, head_b = nn.Linear(5, 1), nn.Linear(5, 1)
    losses = [head_a(z).pow(2).mean(), head_b(z).pow(2).mean() + hidden.sum()]
    assert linear_heads(losses, [z]) is None


def test_a_head_shared_by_two_tasks_falls_back() -> None:
    head = nn.Linear(5, 1)
    _, z, losses = _setup({"a": head, "b": head})
    assert linear_heads(list(losses.values()), [z]) is None


@pytest.mark.parametrize("head_grad", ["own", "weighted"])
def test_backward_equals_the_per_task_path(monkeypatch, head_grad: str) -> None:
    engine = sys.modules["manytask.engine.backward"]
    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(engine, "linear_heads", lambda *a: None)
        torch.manual_seed(2)
        heads = nn.ModuleDict({"a": nn.Linear(5, 2), "b": nn.Linear(5, 1), "c": nn.Linear(5, 1)})
        trunk, z, losses = _setup(dict(heads))
        res = manytask.backward(losses, manytask.make_balancer("mgda"), features=z,
                                mode="feature", head_grad=head_grad)  # type: ignore[arg-type]
        grads = [p.grad.clone() for p in [*trunk.parameters(), *heads.parameters()]]
        results.append((res, grads))
    (fast_res, fast_grads), (slow_res, slow_grads) = results
    assert fast_res.weights == pytest.approx(slow_res.weights, rel=1e-6)
    assert fast_res.gramian is not None and slow_res.gramian is not None
    assert torch.allclose(fast_res.gramian, slow_res.gramian, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
