"""The MMoE paper's synthetic generator, checked against its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manytask.data.synthetic import mmoe_synthetic


@pytest.mark.parametrize("p", [-0.3, 0.5, 0.9, 1.0])
def test_weight_vectors_have_the_requested_cosine_and_scale(p: float) -> None:
    data = mmoe_synthetic(10, p, dim=20, c=2.5, seed=4)
    w1, w2 = data.w1, data.w2
    assert math.isclose(float(w1.norm()), 2.5, rel_tol=1e-9)
    assert math.isclose(float(w2.norm()), 2.5, rel_tol=1e-9)
    assert math.isclose(float(w1 @ w2) / 2.5**2, p, abs_tol=1e-9)


def test_labels_follow_the_formula_without_noise() -> None:
    data = mmoe_synthetic(50, 0.7, dim=8, m=4, noise_std=0.0, seed=1)
    x, a, b = data.x.double().numpy(), data.alphas.numpy(), data.betas.numpy()
    for w, y in ((data.w1.numpy(), data.y1), (data.w2.numpy(), data.y2)):
        z = x @ w
        ref = z + sum(np.sin(a[j] * z + b[j]) for j in range(4))
        np.testing.assert_allclose(y[:, 0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_noise_has_the_paper_variance_and_p_one_gives_twin_tasks() -> None:
    noisy = mmoe_synthetic(20000, 1.0, dim=10, seed=2)
    clean = mmoe_synthetic(20000, 1.0, dim=10, seed=2, noise_std=0.0)
    torch.testing.assert_close(clean.y1, clean.y2)
    # same seed, same draws up to the noise: the residual is the first task's noise
    assert abs(float((noisy.y1 - clean.y1).var()) - 0.01) < 0.001


def test_label_correlation_falls_with_p_and_seed_fixes_data() -> None:
    corr = []
    for p in (0.2, 0.6, 0.95):
        d = mmoe_synthetic(20000, p, dim=10, seed=0)
        corr.append(float(np.corrcoef(d.y1[:, 0].numpy(), d.y2[:, 0].numpy())[0, 1]))
    assert corr[0] < corr[1] < corr[2]
    a, b = mmoe_synthetic(5, 0.5, seed=7), mmoe_synthetic(5, 0.5, seed=7)
    torch.testing.assert_close(a.x, b.x)
    assert mmoe_synthetic(5, 0.5).dataset().dense.shape == (5, 100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"correlation": 1.5}, "correlation"), ({"n_samples": 0}, "n_samples"), ({"dim": 1}, "dim")],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    args = {"n_samples": 5, "correlation": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        mmoe_synthetic(**args)
