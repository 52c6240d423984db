"""GradNorm: the target norms of eq. 2, the weight update of Algorithm 1, absent tasks."""

from __future__ import annotations

import math

import torch
from bal_helpers import random_jacobian

from manytask.balancers import GradNorm


def _setup(alpha: float = 1.5, lr: float = 0.025) -> GradNorm:
    m = GradNorm(alpha=alpha, lr=lr)
    m.setup(["a", "b", "c"])
    return m


def test_target_norms_follow_the_formula() -> None:
    m = _setup(alpha=1.5)
    J = random_jacobian(3, 4, seed=1)
    G = J @ J.T
    m.decide(torch.tensor([1.0, 2.0, 4.0]), ["a", "b", "c"], G)  # records L(0)
    m.weights.copy_(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    losses = [0.5, 1.5, 4.0]
    got = m.target_norms(torch.tensor(losses), ["a", "b", "c"], G)
    # By hand: Ltilde = L/L0; r = Ltilde / mean(Ltilde); target = mean(w ||g||) r^alpha.
    ltilde = [0.5 / 1.0, 1.5 / 2.0, 4.0 / 4.0]
    mean_lt = sum(ltilde) / 3
    w = [0.5, 1.0, 1.5]
    norms = [w[i] * math.sqrt(float(J[i] @ J[i])) for i in range(3)]
    expected = [sum(norms) / 3 * (lt / mean_lt) ** 1.5 for lt in ltilde]
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_update_moves_toward_balanced_rates_and_keeps_sum() -> None:
    m = _setup(lr=0.01)
    J = random_jacobian(3, 5, seed=2) * torch.tensor([[1.0], [4.0], [0.3]], dtype=torch.float64)
    G = J @ J.T
    tasks = ["a", "b", "c"]
    m.decide(torch.tensor([1.0, 1.0, 1.0]), tasks, G)  # L(0)
    losses = torch.tensor([0.6, 0.9, 0.8])

    def imbalance() -> float:
        ratio = m.weights * G.diagonal().sqrt() / m.target_norms(losses, tasks, G)
        return float(ratio.log().abs().max())

    before_w = m.weights.clone()
    before = imbalance()
    used = m.decide(losses, tasks, G).weights
    assert torch.equal(used, before_w)  # this step uses the weights before the update
    assert imbalance() < before
    assert abs(float(m.weights.sum()) - 3.0) < 1e-12 and torch.all(m.weights > 0)


def test_absent_task_state_untouched() -> None:
    m = _setup()
    J = random_jacobian(2, 4, seed=3)
    m.decide(torch.tensor([1.0, 2.0]), ["c", "a"], J @ J.T)
    assert math.isnan(float(m.initial_losses[1]))  # "b" never seen
    assert float(m.weights[1]) == 1.0
    assert float(m.weights.sum()) == 3.0 or abs(float(m.weights.sum()) - 3.0) < 1e-12
    assert torch.equal(m.initial_losses[[2, 0]], torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_weights_stay_positive_under_large_steps() -> None:
    m = _setup(lr=10.0)
    J = random_jacobian(3, 4, seed=4)
    for step in range(5):
        w = m.decide(torch.tensor([1.0, 0.1**step, 2.0]), ["a", "b", "c"], J @ J.T).weights
        assert torch.all(w > 0) and torch.all(torch.isfinite(w))
