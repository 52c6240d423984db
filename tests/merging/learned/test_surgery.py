"""Representation Surgery pulls the merged features towards each expert's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manytask.merging.learned.surgery import SurgeryModule, representation_surgery


def test_surgery_starts_as_identity() -> None:
    z = torch.randn(5, 6)
    assert torch.equal(SurgeryModule(6, 2)(z), z)


def test_surgery_removes_a_feature_bias() -> None:
    gen = torch.Generator().manual_seed(0)
    expert = nn.Linear(5, 6)
    merged = nn.Linear(5, 6)
    with torch.no_grad():
        merged.weight.copy_(expert.weight)
        merged.bias.copy_(expert.bias + torch.randn(6, generator=gen))  # a systematic shift
    loader = [torch.randn(32, 5, generator=gen) for _ in range(4)]
    res = representation_surgery(merged, [expert, merged], [loader, loader], rank=4,
                                 steps=300, lr=0.02)
    assert res.batches_read == [300, 300]
    x = torch.randn(64, 5, generator=gen)
    with torch.no_grad():
        before = (merged(x) - expert(x)).abs().mean()
        after = (res.modules[0](merged(x)) - expert(x)).abs().mean()
        # For the task whose expert is the merged model itself, surgery stays the identity.
        assert torch.allclose(res.modules[1](merged(x)), merged(x), atol=1e-6)
    assert after < 0.25 * before
    assert res.losses[0][-1] < res.losses[0][0]


def test_surgery_validation() -> None:
    enc = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="1 experts for 2 loaders"):
        representation_surgery(enc, [enc], [[], []])
    with pytest.raises(ValueError, match="rank must be"):
        representation_surgery(enc, [enc], [[torch.zeros(1, 3)]], rank=0)
    with pytest.raises(ValueError, match="differ in shape"):
        representation_surgery(enc, [nn.Linear(3, 4)], [[torch.zeros(2, 3)]], steps=1)
