"""Fisher merging and RegMean against their definitions on small models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manytask.merging.learned.fisher_regmean import diagonal_fisher, fisher_merge, regmean_merge


def batches(x: torch.Tensor, y: torch.Tensor | None = None, size: int = 10):
    out = []
    for i in range(0, x.shape[0], size):
        out.append((x[i:i + size],) if y is None else (x[i:i + size], y[i:i + size]))
    return out


def test_regmean_solves_the_merged_regression() -> None:
    g = torch.Generator().manual_seed(0)
    linears = [nn.Linear(5, 3, bias=False) for _ in range(2)]
    norms = [nn.LayerNorm(3) for _ in range(2)]
    models = [nn.Sequential(lin, ln) for lin, ln in zip(linears, norms, strict=True)]
    for lin, ln in zip(linears, norms, strict=True):
        with torch.no_grad():
            lin.weight.copy_(torch.randn(3, 5, generator=g))
            ln.weight.copy_(torch.rand(3, generator=g))
    xs = [torch.randn(40, 5, generator=g) * s for s in (1.0, torch.arange(1.0, 6.0))]
    res = regmean_merge(models, [batches(x) for x in xs], max_batches=3)
    assert res.batches_read == [3, 3]
    used = [x[:30] for x in xs]
    # RegMean's linear weight minimises sum_i ||X_i W^T - X_i W_i^T||^2 over the data read.
    stacked_x = torch.cat(used).double()
    target = torch.cat([x.double() @ lin.weight.double().T
                        for x, lin in zip(used, linears, strict=True)])
    expected = torch.linalg.lstsq(stacked_x, target).solution.T
    assert torch.allclose(res.state_dict["0.weight"].double(), expected, atol=1e-5)
    # Everything else is averaged.
    mean_ln = (norms[0].weight + norms[1].weight) / 2
    assert torch.allclose(res.state_dict["1.weight"], mean_ln)


def test_regmean_alpha_zero_is_a_per_column_weighted_mean() -> None:
    g = torch.Generator().manual_seed(1)
    models = [nn.Linear(4, 2, bias=False) for _ in range(2)]
    xs = [torch.randn(20, 4, generator=g) * torch.tensor(s) for s in
          ([1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 1.0, 2.0])]
    res = regmean_merge(models, [batches(x) for x in xs], max_batches=10, alpha=0.0)
    d = [torch.diagonal(x.double().T @ x.double()) for x in xs]
    w = [m.weight.detach().double() for m in models]
    expected = (w[0] * d[0] + w[1] * d[1]) / (d[0] + d[1])
    assert torch.allclose(res.state_dict["weight"].double(), expected, atol=1e-6)


def test_fisher_matches_a_per_sample_loop() -> None:
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(12, 3, generator=g), torch.randint(3, (12,), generator=g)
    fisher, read = diagonal_fisher(model, batches(x, y, 5), max_batches=5)
    assert read == 3
    expected = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    for i in range(12):
        model.zero_grad()
        ll = -nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        ll.backward()
        for k, p in model.named_parameters():
            assert p.grad is not None
            expected[k] += p.grad.square() / 12
    for k in expected:
        assert torch.allclose(fisher[k], expected[k], atol=1e-6), k


def test_fisher_merge_weights_by_fisher() -> None:
    g = torch.Generator().manual_seed(3)
    models = [nn.Linear(3, 2) for _ in range(2)]
    for m in models:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    data = [batches(torch.randn(8, 3, generator=g), torch.randint(2, (8,), generator=g))
            for _ in models]
    res = fisher_merge(models, data, max_batches=1, weights=[1.0, 3.0], epsilon=1e-6)
    assert res.batches_read == [1, 1]
    f = [diagonal_fisher(m, d, max_batches=1)[0] for m, d in zip(models, data, strict=True)]
    for k, _ in models[0].named_parameters():
        a = 1.0 * (f[0][k] + 1e-6)
        b = 3.0 * (f[1][k] + 1e-6)
        want = (a * models[0].state_dict()[k] + b * models[1].state_dict()[k]) / (a + b)
        assert torch.allclose(res.state_dict[k], want, atol=1e-6), k
    same = fisher_merge([models[0], models[0]], data, max_batches=1, fisher="sampled")
    for k, v in models[0].state_dict().items():
        assert torch.allclose(same.state_dict[k], v, atol=1e-6)


def test_data_aware_validation() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 4)
    data = [[(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))]] * 2
    with pytest.raises(ValueError, match="'weight' has shape"):
        regmean_merge([a, b], data, max_batches=1)
    with pytest.raises(ValueError, match="max_batches must be a positive integer"):
        fisher_merge([a, a], data, max_batches=0)
    with pytest.raises(ValueError, match="2 loaders for 3 models"):
        fisher_merge([a, a, a], data, max_batches=1)
    with pytest.raises(ValueError, match="alpha must be in"):
        regmean_merge([a, a], data, max_batches=1, alpha=1.5)
    with pytest.raises(ValueError, match="fisher must be"):
        fisher_merge([a, a], data, max_batches=1, fisher="exact")
