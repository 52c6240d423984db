"""MultiTab-Bench: the task correlation asked for is the one delivered, and closed-form label
correlations and moments hold."""

from __future__ import annotations

import math

import pytest
import torch

from manytask.data.multitab_bench import multitab_bench, polynomial_moments


@pytest.mark.parametrize(("n_tasks", "p"), [(2, 0.9), (4, 0.5), (5, -0.2), (3, 0.0), (6, 1.0)])
def test_weight_cosines_are_exactly_the_asked_correlation(n_tasks: int, p: float) -> None:
    data = multitab_bench(10, n_tasks, p, n_features=8, seed=3)
    w = data.weights.double()
    gram = w @ w.T
    expected = torch.full((n_tasks, n_tasks), p, dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("n_tasks", "p"), [(2, 0.9), (4, 0.5), (5, -0.2)])
def test_achieved_latent_correlation_matches_within_sampling_error(n_tasks: int, p: float) -> None:
    n = 20_000
    data = multitab_bench(n, n_tasks, p, n_features=16, seed=1)
    corr = data.achieved_correlation
    off = corr[~torch.eye(n_tasks, dtype=torch.bool)]
    # Standard error of a sample correlation: (1 - p^2) / sqrt(n); allow 5 of them.
    assert float((off - p).abs().max()) < 5 * (1 - p**2) / math.sqrt(n) + 1e-6


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_label_correlation_closed_forms_for_degrees_one_and_two(p: float) -> None:
    n, sigma = 40_000, 0.5
    for degree, expected in ((1, p / (1 + sigma**2)), (2, (p + 2 * p**2) / (3 + sigma**2))):
        data = multitab_bench(n, 2, p, complexity=degree, noise_std=sigma, seed=2)
        y = torch.cat([data.targets["task0"], data.targets["task1"]], dim=1)
        got = float(torch.corrcoef(y.T)[0, 1])
        assert abs(got - expected) < 5 / math.sqrt(n), (degree, got, expected)


def test_population_moments_by_hand() -> None:
    # z: mean 0, var 1. z + z^2: mean 1, var 1 + 3 - 1 = 3.
    # z + z^2 + z^3: mean 1, E[(.)^2] = Ez2 + Ez4 + Ez6 + 2 Ez4 = 1 + 3 + 15 + 6 = 25 -> var 24.
    assert polynomial_moments(1) == (0.0, 1.0)
    assert polynomial_moments(2) == pytest.approx((1.0, math.sqrt(3)))
    assert polynomial_moments(3) == pytest.approx((1.0, math.sqrt(24)))
    data = multitab_bench(50_000, 3, 0.5, complexity=[1, 2, 3], noise_std=0.0, seed=0)
    for name in ("task0", "task1", "task2"):
        y = data.targets[name]
        assert abs(float(y.mean())) < 0.05 and abs(float(y.std()) - 1) < 0.1


def test_binary_tasks_splits_and_dataset() -> None:
    data = multitab_bench(1000, 3, 0.5, task_type="binary", seed=0)
    assert [t.kind for t in data.tasks] == ["binary"] * 3
    for y in data.targets.values():
        assert set(y.unique().tolist()) <= {0.0, 1.0} and y.shape == (1000,)
    splits = data.splits((0.6, 0.2, 0.2))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [600, 200, 200]
    reg = multitab_bench(50, 2, 0.5, seed=0)
    assert reg.targets["task0"].shape == (50, 1) and reg.dataset().dense.shape == (50, 32)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="positive semi-definite"):
        multitab_bench(10, 4, -0.5)
    with pytest.raises(ValueError, match="n_features"):
        multitab_bench(10, 5, 0.5, n_features=3)
    with pytest.raises(ValueError, match="one value per task"):
        multitab_bench(10, 3, 0.5, complexity=[1, 2])
    with pytest.raises(ValueError, match="complexity"):
        multitab_bench(10, 2, 0.5, complexity=0)
