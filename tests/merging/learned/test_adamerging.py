"""AdaMerging: coefficients move to lower prediction entropy; the merged model matches them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manytask.merging.learned.adamerging import adamerging, prediction_entropy


def setup(gen: torch.Generator):
    """Two tasks on disjoint feature dimensions: each task's entropy falls as its own
    coefficient grows and does not depend on the other's."""
    encoder = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(encoder.weight)  # the base predicts uniformly: maximal entropy
    taus = []
    for dims in ([0, 1], [2, 3]):
        w = torch.zeros(4, 4)
        w[dims] = torch.randn(2, 4, generator=gen)
        taus.append({"weight": w})
    heads = []
    for dims in ([0, 1], [2, 3]):
        head = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, dims] = 3 * torch.randn(3, 2, generator=gen)
        heads.append(head)
    loaders = [[torch.randn(16, 4, generator=gen) for _ in range(3)] for _ in range(2)]
    return encoder, taus, heads, loaders


def test_task_wise_coefficients_reduce_entropy() -> None:
    encoder, taus, heads, loaders = setup(torch.Generator().manual_seed(0))
    res = adamerging(encoder, taus, heads, loaders, granularity="task", steps=40, lr=0.05)
    assert res.coefficients.shape == (2,)
    assert bool((res.coefficients > 0.6).all())  # from 0.3 towards the upper bound
    assert res.entropy[-1] < res.entropy[0] - 0.1
    assert res.batches_read == [40, 40]  # one batch per task and step, cycling
    want = sum(c * t["weight"] for c, t in zip(res.coefficients, taus, strict=True))
    assert torch.allclose(res.state_dict["weight"], want)


def test_layer_wise_shapes_and_zero_steps() -> None:
    gen = torch.Generator().manual_seed(1)
    encoder = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    taus = [{k: v + torch.randn(v.shape, generator=gen) for k, v in encoder.state_dict().items()}
            for _ in range(3)]
    heads = [nn.Linear(4, 2) for _ in range(3)]
    loaders = [[torch.randn(8, 3, generator=gen)] for _ in range(3)]
    res = adamerging(encoder, taus, heads, loaders, steps=0)
    assert res.coefficients.shape == (3, 4) and len(res.layer_names) == 4
    for name, base in encoder.state_dict().items():
        want = base + 0.3 * sum(sd[name] - base for sd in taus)
        assert torch.allclose(res.state_dict[name], want, atol=1e-6)
    trained = adamerging(encoder, taus, heads, loaders, steps=3, lr=0.01)
    for j, name in enumerate(trained.layer_names):
        base = encoder.state_dict()[name]
        want = base + sum(trained.coefficients[i, j] * (taus[i][name] - base) for i in range(3))
        assert torch.allclose(trained.state_dict[name], want, atol=1e-6)


def test_entropy_and_validation() -> None:
    assert prediction_entropy(torch.zeros(2, 4)).item() == pytest.approx(torch.log(
        torch.tensor(4.0)).item())
    encoder, taus, heads, loaders = setup(torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="granularity"):
        adamerging(encoder, taus, heads, loaders, granularity="block")
    with pytest.raises(ValueError, match="one head and one loader"):
        adamerging(encoder, taus, heads[:1], loaders)
    with pytest.raises(ValueError, match="yields no batch"):
        adamerging(encoder, taus, heads, [[], []], steps=1)
