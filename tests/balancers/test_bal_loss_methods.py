"""Uncertainty weighting and DWA: their definitions, on hand-made cases."""

from __future__ import annotations

import math

import torch

from manytask.balancers import DynamicWeightAverage, UncertaintyWeighting


def test_uncertainty_gradient_matches_analytic() -> None:
    m = UncertaintyWeighting()
    m.setup(["a", "b", "c"])
    with torch.no_grad():
        for p, v in zip(m.log_vars, [0.3, -0.7, 1.1], strict=True):
            p.fill_(v)
    losses = torch.tensor([2.0, 0.5, 3.0], requires_grad=True)
    d = m.decide(losses[[2, 0]], ["c", "a"])
    assert d.objective is not None
    d.objective.backward()
    s = {"a": 0.3, "c": 1.1}
    loss = {"a": 2.0, "c": 3.0}
    for i, name in ((0, "a"), (2, "c")):
        analytic = -0.5 * math.exp(-s[name]) * loss[name] + 0.5
        assert abs(float(m.log_vars[i].grad) - analytic) < 1e-6
    assert m.log_vars[1].grad is None  # the absent task's parameter gets no gradient
    expected = torch.tensor([0.5 * math.exp(-1.1), 0.5 * math.exp(-0.3)], dtype=torch.float64)
    assert torch.allclose(d.weights, expected)
    # Objective value: sum 0.5 exp(-s) L + 0.5 s over present tasks.
    value = sum(0.5 * math.exp(-s[n]) * loss[n] + 0.5 * s[n] for n in ("a", "c"))
    assert abs(float(d.objective.detach()) - value) < 1e-5


def test_uncertainty_initial_weights() -> None:
    m = UncertaintyWeighting()
    m.setup(["a", "b"])
    d = m.decide(torch.tensor([1.0, 2.0]), ["a", "b"])
    assert torch.equal(d.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_dwa_on_hand_made_history() -> None:
    m = DynamicWeightAverage(T=2.0)
    m.setup(["a", "b", "c"])
    tasks = ["a", "b", "c"]
    # Epoch 0: means a=2, b=4, c=1 (two steps each); epoch 1: a=1, b=4, c=2 ("c" one step).
    for losses in ([1.0, 3.0, 1.0], [3.0, 5.0, 1.0]):
        assert torch.equal(
            m.decide(torch.tensor(losses), tasks).weights, torch.ones(3, dtype=torch.float64)
        )
    m.end_epoch()
    assert torch.equal(
        m.decide(torch.tensor([1.5, 4.0]), ["a", "b"]).weights,
        torch.ones(2, dtype=torch.float64),
    )
    m.decide(torch.tensor([0.5, 4.0, 2.0]), tasks)
    m.end_epoch()
    # r = (1/2, 4/4, 2/1); w_k = 3 exp(r_k/2) / sum_j exp(r_j/2).
    r = [0.5, 1.0, 2.0]
    z = sum(math.exp(x / 2) for x in r)
    expected = torch.tensor([3 * math.exp(x / 2) / z for x in r], dtype=torch.float64)
    w = m.decide(torch.tensor([1.0, 1.0, 1.0]), tasks).weights
    assert torch.allclose(w, expected, rtol=1e-12)
    assert abs(float(w.sum()) - 3) < 1e-12
    # A permutation of the present tasks permutes the weights.
    wp = m.decide(torch.tensor([1.0, 1.0, 1.0]), ["c", "a", "b"]).weights
    assert torch.allclose(wp, expected[[2, 0, 1]])


def test_dwa_task_without_data_gets_ratio_one() -> None:
    m = DynamicWeightAverage(T=1.0)
    m.setup(["a", "b"])
    m.decide(torch.tensor([2.0]), ["a"])
    m.end_epoch()
    m.decide(torch.tensor([1.0, 3.0]), ["a", "b"])
    m.end_epoch()
    # r_a = 1/2; "b" had no data in epoch 0, so r_b = 1.
    w = m.decide(torch.tensor([1.0, 1.0]), ["a", "b"]).weights
    z = math.exp(0.5) + math.exp(1.0)
    assert torch.allclose(
        w, torch.tensor([2 * math.exp(0.5) / z, 2 * math.exp(1.0) / z], dtype=torch.float64)
    )
