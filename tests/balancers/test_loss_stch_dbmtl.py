"""STCH and DB-MTL against their definitions on hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch
from losslevel_helpers import decide, make
from torchjd.scalarization import STCH as TorchjdSTCH

# ---------------------------------------------------------------------------------------- STCH


def _objective(name: str, values: list[float], **params: object) -> float:
    method = make(name, tuple("abcd"[: len(values)]), **params)
    decision, _ = decide(method, values)
    assert decision.objective is not None
    return float(decision.objective.detach())


def test_stch_by_hand() -> None:
    value = _objective("stch", [1.0, 2.0], mu=1.0)
    assert math.isclose(value, math.log(math.e + math.e**2), rel_tol=1e-12)
    method = make("stch", ("a", "b"), mu=0.5, preference={"b": 3.0})
    decision, _ = decide(method, [1.0, 2.0])
    x = [1.0 / 0.5, 6.0 / 0.5]
    soft = [math.exp(v) / (math.exp(x[0]) + math.exp(x[1])) for v in x]
    expected = torch.tensor([soft[0], soft[1] * 3.0], dtype=torch.float64)
    assert torch.allclose(decision.weights, expected, rtol=1e-12)


def test_stch_tends_to_the_maximum_as_mu_vanishes() -> None:
    values = [0.3, 2.0, 1.1]
    for mu in (1e-1, 1e-2, 1e-3):
        value = _objective("stch", values, mu=mu)
        # max <= smooth max <= max + mu log K
        assert 2.0 <= value <= 2.0 + mu * math.log(3) + 1e-12
    assert math.isclose(_objective("stch", values, mu=1e-4), 2.0, abs_tol=1e-3)


def test_stch_tends_to_the_mean_plus_mu_log_k_as_mu_grows() -> None:
    values = [0.3, 2.0, 1.1]
    mean = sum(values) / 3
    errors = [abs(_objective("stch", values, mu=mu) - mu * math.log(3) - mean)
              for mu in (10.0, 100.0, 1000.0)]
    assert errors[-1] < 1e-3
    assert errors[0] > errors[1] > errors[2]


def test_stch_warmup_normalises_by_the_mean_warmup_loss() -> None:
    method = make("stch", ("a", "b"), mu=1.0, warmup_steps=2)
    d1, _losses = decide(method, [1.0, 4.0])
    assert d1.objective is not None  # warm-up: sum of log losses
    assert math.isclose(float(d1.objective.detach()), math.log(4.0), rel_tol=1e-6)
    assert torch.allclose(d1.weights, torch.tensor([1.0, 0.25], dtype=torch.float64))
    decide(method, [3.0, 8.0])
    d3, _ = decide(method, [2.0, 3.0])  # means (2, 6): f = (1, 0.5)
    assert d3.objective is not None
    assert math.isclose(float(d3.objective.detach()), math.log(math.e + math.exp(0.5)),
                        rel_tol=1e-12)
    soft = torch.softmax(torch.tensor([1.0, 0.5], dtype=torch.float64), dim=0)
    assert torch.allclose(d3.weights, soft / torch.tensor([2.0, 6.0], dtype=torch.float64))


def test_stch_log_losses_and_running_min_ideal_point() -> None:
    method = make("stch", ("a", "b"), mu=1.0, ideal="running_min", log_losses=True, eps=1e-12)
    d1, _ = decide(method, [3.0, 1.0])  # f - z = 0 for both at the first step
    assert d1.objective is not None
    assert math.isclose(float(d1.objective.detach()), math.log(2.0), rel_tol=1e-9)
    d2, _ = decide(method, [2.0, 2.0])  # z = (log 2, log 1): x = (0, log 2)
    assert d2.objective is not None
    assert math.isclose(float(d2.objective.detach()), math.log(1.0 + 2.0), rel_tol=1e-9)
    assert torch.allclose(method.ideal_point, torch.tensor([math.log(2.0), 0.0],
                                                           dtype=torch.float64), atol=1e-9)


def test_stch_agrees_with_torchjd() -> None:
    values = torch.tensor([0.4, 1.3, 0.9], dtype=torch.float64)
    pref = {"a": 0.2, "b": 0.5, "c": 0.3}
    for mu in (0.01, 0.1, 1.0):
        ours = _objective("stch", values.tolist(), mu=mu, preference=pref)
        theirs = TorchjdSTCH(mu, weights=torch.tensor(list(pref.values()), dtype=torch.float64))
        assert math.isclose(ours, float(theirs(values)), rel_tol=1e-12)


# -------------------------------------------------------------------------------------- DB-MTL
def test_dbmtl_needs_the_gramian() -> None:
    method = make("dbmtl", ("a", "b"))
    assert method.requires == "gramian" and method.weights_losses  # its kind
    with pytest.raises(ValueError, match="Gramian"):
        method.decide(torch.ones(2, requires_grad=True), ("a", "b"), torch.eye(3).double())


def test_dbmtl_scales_every_log_gradient_to_the_largest_by_hand() -> None:
    method = make("dbmtl", ("a", "b"), eps=1e-12)
    gram = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))  # ||g|| = (2, 1)
    # ||grad log L|| = (2/1, 1/1): alpha = (1, 2); w = alpha / L.
    d1, _ = decide(method, [1.0, 1.0], gramian=gram)
    assert torch.allclose(d1.weights, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert d1.objective is not None  # sum_k alpha_k log L_k = 0 here
    assert abs(float(d1.objective.detach())) < 1e-9


def test_dbmtl_weighted_log_gradients_have_equal_norms() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    gram = a @ a.T
    method = make("dbmtl", tuple("abcd"))
    decision, _ = decide(method, [0.3, 2.0, 5.0, 0.01], gramian=gram)
    # After one step every m_k is (1 - beta) n_k, so ||w_k g_k|| = max_j n_j for all k.
    norms = decision.weights * gram.diagonal().sqrt()
    assert torch.allclose(norms, norms.max().expand(4), rtol=1e-9)


def test_dbmtl_ema_of_norms_over_two_steps() -> None:
    beta, sigma = 0.9, 0.5
    method = make("dbmtl", ("a", "b"), beta=beta, sigma=sigma, eps=1e-12)
    decide(method, [1.0, 1.0], gramian=torch.diag(torch.tensor([4.0, 1.0]).double()))
    d2, _ = decide(method, [1.0, 1.0], gramian=torch.diag(torch.tensor([1.0, 9.0]).double()))
    m1 = [(1 - beta) * 2.0, (1 - beta) * 1.0]
    rate = beta / 2**sigma
    m2 = [rate * m1[0] + (1 - rate) * 1.0, rate * m1[1] + (1 - rate) * 3.0]
    top = max(m2)
    expected = torch.tensor([top / m2[0], top / m2[1]], dtype=torch.float64)
    assert torch.allclose(method.norm_avg, torch.tensor(m2, dtype=torch.float64))
    assert torch.allclose(d2.weights, expected)


def test_dbmtl_zero_gradient_task_keeps_unit_scale() -> None:
    method = make("dbmtl", ("a", "b"), eps=1e-12)
    d, _ = decide(method, [1.0, 1.0], gramian=torch.diag(torch.tensor([0.0, 4.0]).double()))
    assert torch.allclose(d.weights, torch.ones(2, dtype=torch.float64))
