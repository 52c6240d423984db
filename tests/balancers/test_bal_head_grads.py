"""The heads' gradients taken in the per-task passes, and the fall-back to a full backward.

``manytask.backward`` takes each task's gradient w.r.t. its head in the same pass as its
feature gradient and then backpropagates only the shared part. The result must equal the
definition: head parameter p gets ``sum_k h_k dL_k/dp`` (h_k = 1, or the task's weight with
``head_grad="weighted"``), the shared part gets the update backpropagated from the features.
Graphs where that split is wrong (a head reading a trunk parameter, nested feature tensors)
must be detected and fall back.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import manytask
from manytask.balancers import make_balancer
from manytask.engine.gradients import head_leaves


class Tied(nn.Module):
    """Trunk, two linear heads, a scale shared by both heads; optionally a head that also
    reads the trunk's first weight (as a tied output embedding does)."""

    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.tie = tie

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.trunk(x)
        out = [self.scale * h(z).squeeze(-1) for h in self.heads]
        if self.tie:
            out[1] = out[1] + self.trunk[0].weight.sum()
        return out, z


def _losses(model: Tied, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor]:
    out, z = model(x)
    return {"a": ((out[0] - y[:, 0]) ** 2).mean(), "b": ((out[1] - y[:, 1]) ** 2).mean()}, z


def _expected(model: Tied, x: torch.Tensor, y: torch.Tensor, weights: list[float],
              head_weights: list[float]) -> dict[str, torch.Tensor]:
    """The definition, by separate autograd calls: the update sum_k w_k dL_k/dz through the
    trunk, plus sum_k h_k dL_k/dp along the paths that do not pass through z."""
    losses, z = _losses(model, x, y)
    zd = z.detach().requires_grad_()  # cut the graph at z for the heads' own paths
    out = [model.scale * h(zd).squeeze(-1) for h in model.heads]
    if model.tie:
        out[1] = out[1] + model.trunk[0].weight.sum()
    heads_only = [((out[0] - y[:, 0]) ** 2).mean(), ((out[1] - y[:, 1]) ** 2).mean()]
    params = list(model.parameters())
    total = {id(p): torch.zeros_like(p) for p in params}
    for k, loss in enumerate(heads_only):
        for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True,
                                                    allow_unused=True), strict=True):
            if g is not None:
                total[id(p)] += head_weights[k] * g
    fz = [torch.autograd.grad(v, z, retain_graph=True)[0] for v in losses.values()]
    update = sum(w * g for w, g in zip(weights, fz, strict=True))
    trunk = list(model.trunk.parameters())
    for p, g in zip(trunk, torch.autograd.grad(z, trunk, update), strict=True):
        total[id(p)] += g
    return {n: total[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("head_grad", ["own", "weighted"])
@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_backward_matches_the_definition(tie: bool, head_grad: str, mode: str) -> None:
    torch.manual_seed(0)
    model = Tied(tie).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    balancer = make_balancer("imtl_g")  # gradient level: update = sum_k w_k dL_k/dz
    losses, z = _losses(model, x, y)
    if not tie:  # the split is used: each head's own leaves, the shared scale in both
        found = head_leaves(list(losses.values()), [z])
        assert found is not None
        assert [{id(p) for p in f} for f in found] == [
            {id(model.heads[0].weight), id(model.heads[0].bias), id(model.scale)},
            {id(model.heads[1].weight), id(model.heads[1].bias), id(model.scale)},
        ]
    else:
        assert head_leaves(list(losses.values()), [z]) is None
    for p in model.parameters():  # .grad accumulates, as Tensor.backward does
        p.grad = torch.ones_like(p)
    result = manytask.backward(losses, balancer, features=z,
                               shared_params=list(model.trunk.parameters()), mode=mode,
                               head_grad=head_grad)  # type: ignore[arg-type]
    w = [result.weights["a"], result.weights["b"]]
    expected = _expected(model, x, y, w, w if head_grad == "weighted" else [1.0, 1.0])
    for name, p in model.named_parameters():
        assert p.grad is not None
        assert torch.allclose(p.grad - 1, expected[name], atol=1e-10), name


def test_nested_features_fall_back() -> None:
    h1 = torch.randn(4, 3, requires_grad=True) * 2
    h2 = h1.tanh()
    w = torch.randn(3, requires_grad=True)
    losses = [(h1 @ w).sum(), (h2 @ w).pow(2).sum()]
    assert head_leaves(losses, [h1, h2]) is None
    assert head_leaves(losses, [h2]) is None  # loss 0 reaches the trunk's leaf past h2


def test_leaf_features_are_not_head_leaves() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    found = head_leaves([(z @ w).sum(), z.sum()], [z])
    assert found is not None
    assert [[id(p) for p in f] for f in found] == [[id(w)], []]
