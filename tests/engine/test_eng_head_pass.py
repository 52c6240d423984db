"""One backward for every task's feature gradient (manytask.engine.head_pass) against the
per-task definition dL_k/dz, and its fallback where heads share part of their graph."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from manytask.engine.gradients import feature_gradients, head_leaves
from manytask.engine.head_pass import head_edges

B, H = 6, 5


def _trunk() -> tuple[Tensor, nn.Module]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, H), nn.Tanh())
    return trunk(torch.randn(B, 4)), trunk


def _definition(losses: list[Tensor], feats: list[Tensor]) -> list[Tensor]:
    per_task = [torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
                for loss in losses]
    return [torch.stack([g[i] if g[i] is not None else torch.zeros_like(f) for g in per_task])
            for i, f in enumerate(feats)]


def _check(losses: list[Tensor], feats: list[Tensor], one_pass_expected: bool) -> None:
    heads = head_leaves(losses, feats)
    assert heads is not None
    assert (head_edges(losses, feats) is not None) == one_pass_expected
    stacked, own = feature_gradients(losses, feats, heads)
    for got, want in zip(stacked, _definition(losses, feats), strict=True):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert own is not None
    for loss, pairs, leaves in zip(losses, own, heads, strict=True):
        want = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True) \
            if leaves else ()
        expected = [(leaf, w) for leaf, w in zip(leaves, want, strict=True) if w is not None]
        for (leaf, g), (leaf_w, w) in zip(pairs, expected, strict=True):
            assert leaf is leaf_w and torch.allclose(g, w, atol=1e-6)


def _mlp_heads(k: int) -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(H, 3), nn.ReLU(), nn.Linear(3, 1)) for _ in range(k)]


def test_two_layer_heads_take_one_pass() -> None:
    z, _ = _trunk()
    losses = [(head(z) ** 2).mean() for head in _mlp_heads(4)]
    _check(losses, [z], one_pass_expected=True)


def test_head_reading_the_features_twice_and_two_feature_tensors() -> None:
    a, b = nn.Linear(H, 1), nn.Linear(H, 1)
    out = nn.Linear(4, 2 * H)(torch.randn(B, 4))
    z1, z2 = out[:, :H], torch.tanh(out[:, H:])  # two trunk outputs, neither made from the other
    losses = [(a(z1 * z1) + a(z1)).pow(2).mean(), (b(z2) * b(z1)).mean(), (z2 ** 3).sum()]
    _check(losses, [z1, z2], one_pass_expected=True)


def test_nested_features_are_left_to_the_caller() -> None:
    z, _ = _trunk()
    z2 = torch.sin(z) * 2  # computed from z: head_leaves refuses, so no head pass is asked for
    head = nn.Linear(H, 1)
    assert head_leaves([head(z).mean(), head(z2).mean()], [z, z2]) is None


@pytest.mark.parametrize("case", ["shared layer", "loss of two heads", "shared scale"])
def test_heads_sharing_a_node_fall_back_to_one_pass_per_task(case: str) -> None:
    z, _ = _trunk()
    heads = _mlp_heads(3)
    scale = nn.Parameter(torch.tensor(1.5))
    builders: dict[str, Callable[[], list[Tensor]]] = {
        "shared layer": lambda: [(heads[0](z) ** 2).mean(), (heads[0](z) + heads[1](z)).mean(),
                                 heads[2](z).mean()],
        "loss of two heads": lambda: [(o := heads[0](z)).pow(2).mean(),
                                      (o * heads[1](z)).mean(), heads[2](z).mean()],
        "shared scale": lambda: [(scale * heads[k](z)).pow(2).mean() for k in range(3)],
    }
    _check(builders[case](), [z], one_pass_expected=False)


def test_a_loss_that_does_not_read_the_features() -> None:
    z, _ = _trunk()
    heads = _mlp_heads(2)
    own = nn.Parameter(torch.ones(3))
    losses = [heads[0](z).mean(), (own ** 2).sum(), heads[1](z).pow(2).mean()]
    _check(losses, [z], one_pass_expected=True)
