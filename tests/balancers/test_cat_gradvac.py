"""GradVac: hand-computed step, the paper's property, state, absent tasks, torchjd."""

from __future__ import annotations

import math

import pytest
import torch
from bal_helpers import decide_gramian, make, random_jacobian

from manytask.balancers import GradVac
from manytask.balancers.gradvac import gradvac_coefficients


def test_hand_computed_two_tasks() -> None:
    # g1 = (1, 0), g2 = (-1, 1): cos = -1/sqrt2 < phi_hat = 0 fires on both rows.
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    m = make("gradvac", 2, beta=0.5, eps=0.0)
    w = decide_gramian(m, J @ J.T)
    # eq. 3 with phi_hat = 0: g_i += ||g_i|| (-phi) / ||g_j|| g_j, i.e. a projection of g_i on
    # the normal plane of g_j scaled back to ||g_i|| ... coefficient -phi ||g_i|| / ||g_j||.
    phi = -1 / math.sqrt(2)
    c12 = -phi * 1.0 / math.sqrt(2)  # row 1 adds c12 g2
    c21 = -phi * math.sqrt(2) / 1.0  # row 2 adds c21 g1
    assert torch.allclose(w, torch.tensor([1 + c21, 1 + c12], dtype=torch.float64))
    assert torch.allclose(m.phi_hat, torch.tensor([[0, phi / 2], [phi / 2, 0]]).double())


def test_corrected_cosine_reaches_the_target() -> None:
    # With two tasks, after the correction cos(g_i^PC, g_j) equals phi_hat exactly (eq. 3).
    J = random_jacobian(2, 6, seed=3)
    G = J @ J.T
    assert float(G[0, 1] / (G[0, 0] * G[1, 1]).sqrt()) < 0.6  # so the correction fires
    target = torch.tensor([[0.0, 0.6], [0.6, 0.0]], dtype=torch.float64)
    coef, _ = gradvac_coefficients(G, target, torch.tensor([[1], [0]]), 0.5, 0.0)
    for i, j in ((0, 1), (1, 0)):
        gi = coef[i] @ J
        assert abs(float(gi @ J[j] / (gi.norm() * J[j].norm())) - 0.6) < 1e-12


def test_no_correction_when_cosines_above_target() -> None:
    J = torch.rand(4, 5, dtype=torch.float64)  # non-negative: cosines > 0 = phi_hat
    m = make("gradvac", 4)
    assert torch.equal(decide_gramian(m, J @ J.T), torch.ones(4, dtype=torch.float64))


def test_absent_task_keeps_its_state() -> None:
    m = make("gradvac", 3)
    m.phi_hat.fill_(0.25)
    J = random_jacobian(2, 4, seed=1)
    m.decide(torch.ones(2), ["t0", "t2"], J @ J.T)
    assert torch.all(m.phi_hat[1] == 0.25) and torch.all(m.phi_hat[:, 1] == 0.25)
    assert m.phi_hat[0, 2] != 0.25 and m.phi_hat[2, 0] != 0.25


def test_state_dict_round_trip() -> None:
    J = random_jacobian(3, 5, seed=2)
    a = make("gradvac", 3, beta=0.3)
    decide_gramian(a, J @ J.T)
    b = make("gradvac", 3, beta=0.3)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(5)
    wa = decide_gramian(a, J @ J.T)
    torch.manual_seed(5)
    assert torch.equal(decide_gramian(b, J @ J.T), wa)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="beta"):
        GradVac(beta=1.5)
    with pytest.raises(ValueError, match="eps"):
        GradVac(eps=-1.0)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_agrees_with_torchjd_over_steps(k: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    theirs = aggregation.GradVac(beta=0.3)
    ours = make("gradvac", k, beta=0.3)
    for step in range(4):
        J = random_jacobian(k, 7, seed=10 * k + step)
        torch.manual_seed(step)
        expected = theirs(J)
        torch.manual_seed(step)
        got = decide_gramian(ours, J @ J.T) @ J
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * float(expected.norm()))
