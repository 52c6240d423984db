"""RLW, GLS and IMTL-L against their definitions and against torchjd's scalarizers."""

from __future__ import annotations

import math

import pytest
import torch
from losslevel_helpers import decide, grad_wrt_losses, make, scale_grads, set_scales
from torchjd.scalarization import IMTLL as TorchjdIMTLL
from torchjd.scalarization import GeometricMean, Random

from manytask.balancers.gls import GLS
from manytask.balancers.imtl_l import IMTLL
from manytask.balancers.rlw import RLW


# ---------------------------------------------------------------------------------------- RLW
def test_rlw_weights_lie_on_the_simplex_and_change_every_step() -> None:
    method = make("rlw")
    draws = torch.stack([decide(method, [1.0, 2.0, 3.0])[0].weights for _ in range(200)])
    assert (draws > 0).all()
    assert torch.allclose(draws.sum(dim=1), torch.ones(200, dtype=torch.float64))
    assert not torch.equal(draws[0], draws[1])
    # Exchangeable: each task's mean weight is 1/K (softmax of i.i.d. normals).
    assert torch.allclose(draws.mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64),
                          atol=0.05)


def test_rlw_is_softmax_of_standard_normal_draws_and_reproducible() -> None:
    method = RLW()
    method.setup(("a", "b"))
    torch.manual_seed(5)
    w1 = decide(method, [1.0, 1.0])[0].weights
    torch.manual_seed(5)
    w2 = decide(method, [1.0, 1.0])[0].weights
    torch.manual_seed(5)
    expected = torch.softmax(torch.randn(2).double(), dim=0)
    assert torch.equal(w1, w2)
    assert torch.allclose(w1, expected)


def test_rlw_total_tasks_sums_to_k() -> None:
    method = make("rlw", total="tasks")
    w = decide(method, [1.0, 2.0], ("a", "c"))[0].weights
    assert math.isclose(float(w.sum()), 2.0)


def test_rlw_agrees_with_torchjd_random() -> None:
    losses = torch.tensor([0.3, 1.5, 2.0])
    method = make("rlw")
    for seed in range(5):
        torch.manual_seed(seed)
        ours = (decide(method, losses.tolist())[0].weights.float() * losses).sum()
        torch.manual_seed(seed)
        theirs = Random()(losses)
        assert torch.allclose(ours, theirs, rtol=1e-6)


# ---------------------------------------------------------------------------------------- GLS
def test_gls_is_the_geometric_mean() -> None:
    method = GLS(eps=0.0)
    method.setup(("a", "b", "c"))
    decision, _losses = decide(method, [1.0, 4.0, 16.0])
    assert decision.objective is not None
    assert math.isclose(float(decision.objective.detach()), 4.0, rel_tol=1e-12)  # (1*4*16)^(1/3)


def test_gls_gradient_is_gls_over_k_times_loss() -> None:
    method = make("gls", eps=0.0)
    values = [0.5, 2.0, 8.0]  # geometric mean 2
    decision, losses = decide(method, values)
    expected = torch.tensor([2.0 / (3 * v) for v in values], dtype=torch.float64)
    assert torch.allclose(grad_wrt_losses(decision, losses), expected, rtol=1e-12)
    assert torch.allclose(decision.weights, expected, rtol=1e-12)


def test_gls_is_scale_invariant_in_direction() -> None:
    # Multiplying one loss by 100 multiplies the objective by 100^(1/K) and leaves the
    # normalised gradient coefficients of the other tasks relative to it unchanged.
    method = make("gls", ("a", "b"), eps=0.0)
    d1, _ = decide(method, [1.0, 2.0])
    d2, _ = decide(method, [100.0, 2.0])
    assert d1.objective is not None and d2.objective is not None
    assert math.isclose(float((d2.objective / d1.objective).detach()), 10.0, rel_tol=1e-12)
    assert math.isclose(float(d2.weights[0] * 100 / d2.weights[1]),
                        float(d1.weights[0] / d1.weights[1]), rel_tol=1e-12)


def test_gls_rejects_negative_losses() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        decide(make("gls"), [1.0, -0.5, 2.0])


def test_gls_agrees_with_torchjd_geometric_mean() -> None:
    losses = torch.tensor([0.2, 3.0, 1.7], dtype=torch.float64)
    ours = decide(make("gls", eps=0.0), losses.tolist())[0].objective
    assert ours is not None
    assert torch.allclose(ours, GeometricMean()(losses), rtol=1e-12)


# ------------------------------------------------------------------------------------- IMTL-L
def test_imtl_l_objective_by_hand() -> None:
    method = IMTLL()
    method.setup(("a", "b"))
    set_scales(method, [0.5, -1.0])
    decision, _ = decide(method, [2.0, 3.0])
    expected = math.exp(0.5) * 2 - 0.5 + math.exp(-1.0) * 3 + 1.0
    assert decision.objective is not None
    assert math.isclose(float(decision.objective.detach()), expected, rel_tol=1e-12)
    assert torch.allclose(decision.weights, torch.tensor([math.exp(0.5), math.exp(-1.0)],
                                                         dtype=torch.float64))


def test_imtl_l_optimum_scales_losses_to_one() -> None:
    # sum_k e^{s_k} L_k - s_k is convex in s; its gradient e^{s_k} L_k - 1 vanishes exactly
    # at s_k = -log L_k and is positive above, negative below.
    values = torch.tensor([0.05, 1.0, 40.0], dtype=torch.float64)
    method = make("imtl_l")
    for shift, sign in ((0.0, 0), (0.1, 1), (-0.1, -1)):
        method.zero_grad()
        set_scales(method, -values.log() + shift)
        decision, _ = decide(method, values.tolist())
        assert decision.objective is not None
        decision.objective.backward()
        grad = torch.tensor(scale_grads(method), dtype=torch.float64)
        if sign == 0:  # float32 scales: -log L_k is rounded to ~1e-7
            assert torch.allclose(grad, torch.zeros(3, dtype=torch.float64), atol=1e-6)
            assert torch.allclose(decision.weights * values, torch.ones(3, dtype=torch.float64),
                                  atol=1e-6)
        else:
            assert (torch.sign(grad) == sign).all()


def test_imtl_l_absent_scale_gets_no_gradient() -> None:
    method = make("imtl_l")
    decision, _ = decide(method, [3.0, 2.0], ("a", "c"))
    assert decision.objective is not None
    decision.objective.backward()
    grads = scale_grads(method)
    assert grads[1] is None  # absent: no gradient at all, so optimisers skip it
    assert grads[0] == 3.0 - 1 and grads[2] == 2.0 - 1  # d/ds (e^s L - s) at s = 0: L - 1


def test_imtl_l_agrees_with_torchjd() -> None:
    method = make("imtl_l")
    theirs = TorchjdIMTLL(3).double()
    s = torch.tensor([0.2, -0.7, 1.3], dtype=torch.float64)
    set_scales(method, s)
    with torch.no_grad():
        theirs.log_scale.copy_(s.float().double())  # ours are float32
    values = torch.tensor([0.4, 2.5, 0.01], dtype=torch.float64)
    ours = decide(method, values.tolist())[0].objective
    assert ours is not None
    assert torch.allclose(ours, theirs(values), rtol=1e-12)
