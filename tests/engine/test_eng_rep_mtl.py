"""Rep-MTL regulariser: entropy and alignment closed forms, gradients, composition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import manytask
from manytask.balancers import make_balancer
from manytask.engine.rep_mtl import (
    rep_mtl_backward,
    rep_mtl_regularizer,
    saliency_alignment,
    saliency_entropy,
    task_saliency,
)


def test_entropy_closed_forms() -> None:
    # Each position dominated by one task: entropy 0. Equal magnitudes: log K.
    disjoint = torch.tensor([[[1.0, 0.0]], [[0.0, -3.0]]])  # (K=2, B=1, C=2)
    assert float(saliency_entropy(disjoint)) == pytest.approx(0.0, abs=1e-9)
    equal = torch.full((3, 2, 4), 0.5) * torch.tensor([1.0, -1.0, 1.0])[:, None, None]
    assert float(saliency_entropy(equal)) == pytest.approx(math.log(3), rel=1e-6)
    # Channel aggregation for (K, B, C, H): shares of (1 + 1) vs (2 + 0) -> 1/2 each.
    conv = torch.tensor([[[[1.0], [1.0]]], [[[2.0], [0.0]]]])
    assert float(saliency_entropy(conv)) == pytest.approx(math.log(2), rel=1e-6)


def test_alignment_hand_computed() -> None:
    # Two tasks, two samples, unit saliencies: task 0 = (e1, e2), task 1 = (e1, e1).
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    sal = torch.stack([torch.stack([e1, e2]), torch.stack([e1, e1])])
    t = 0.5
    # Pair (0,1): sample 0: logits (1, 1)/t -> -log(1/2); sample 1: logits (0, 0) -> -log(1/2).
    # Pair (1,0): sample 0: logits (1, 0)/t; sample 1: logits (1, 0)/t -> positive is 0 resp. 1.
    l10_s0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    l10_s1 = -math.log(1 / (math.exp(2) + 1))
    expected = (2 * math.log(2) + l10_s0 + l10_s1) / 4
    assert float(saliency_alignment(sal, t)) == pytest.approx(expected, rel=1e-6)
    assert float(saliency_alignment(sal[:1], t)) == 0.0  # one task: nothing to align


def _setup() -> tuple[nn.Module, dict[str, nn.Module], dict[str, torch.Tensor], torch.Tensor]:
    heads: dict[str, nn.Module]
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    heads = {n: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)) for n in "abc"}
    x = torch.randn(5, 3)
    z = shared(x)
    losses = {n: ((heads[n](z) - i) ** 2).mean() for i, n in enumerate("abc")}
    return shared, heads, losses, z


def test_saliency_is_the_feature_gradient_and_regulariser_trains_shared_part() -> None:
    shared, _, losses, z = _setup()
    sal = task_saliency(losses, z)
    for k, loss in enumerate(losses.values()):
        (g,) = torch.autograd.grad(loss, z, retain_graph=True)
        assert torch.allclose(sal[k], g)
    reg = rep_mtl_regularizer(losses, z)
    grads = torch.autograd.grad(reg, list(shared.parameters()), retain_graph=True)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_backward_composes_with_any_method() -> None:
    shared, _, losses, z = _setup()
    params = list(shared.parameters())
    reg = rep_mtl_regularizer(losses, z, tsr_weight=0.3, csa_weight=0.7)
    expected = torch.autograd.grad(reg + sum(losses.values()), params, retain_graph=True)
    rep_mtl_backward(losses, make_balancer("equal"), features=z, tsr_weight=0.3, csa_weight=0.7)
    for p, e in zip(params, expected, strict=True):
        assert p.grad is not None and torch.allclose(p.grad, e, atol=1e-6)
    # Absent task: the regulariser runs over the tasks present only; with a gradient method.
    shared, _, losses, z = _setup()
    present = {n: losses[n] for n in ("a", "c")}
    result = rep_mtl_backward(
        present, make_balancer("upgrad"), features=z, shared_params=shared.parameters()
    )
    assert set(result.weights) == {"a", "c"}
    assert isinstance(result, manytask.BackwardResult)


def test_invalid_arguments() -> None:
    _, _, losses, z = _setup()
    with pytest.raises(ValueError, match="temperature"):
        rep_mtl_regularizer(losses, z, temperature=0.0)
    with pytest.raises(ValueError, match="tsr_weight"):
        rep_mtl_regularizer(losses, z, tsr_weight=-1.0)
    with pytest.raises(ValueError, match="batch and a feature axis"):
        rep_mtl_regularizer(losses, z.sum(0))
