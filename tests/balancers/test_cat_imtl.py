"""Full IMTL: IMTL-G on the IMTL-L-scaled gradients, and the scales' own gradient."""

from __future__ import annotations

import torch
from bal_helpers import make, random_jacobian

from manytask.balancers.imtl import imtl_g_weights


def test_zero_scales_give_imtl_g() -> None:
    J = random_jacobian(3, 6, seed=1)
    m = make("imtl", 3)
    w = m.decide(torch.tensor([1.0, 2.0, 3.0]), list(m.task_names), J @ J.T).weights
    assert torch.allclose(w, imtl_g_weights(J @ J.T), atol=1e-12)


def test_equal_projections_on_scaled_gradients_and_scale_gradient() -> None:
    J = random_jacobian(3, 6, seed=2)
    m = make("imtl", 3)
    s = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        for p, v in zip(m.log_scales, s, strict=True):
            p.fill_(float(v))
    losses = torch.tensor([0.3, 1.5, 0.02])
    w = m.decide(losses, list(m.task_names), J @ J.T).weights
    e = torch.exp(s.double())
    # The update: equal projections on every unit gradient (scale-free), and a_k = w_k / e^s_k
    # sums to 1 (IMTL-G's convention on the scaled gradients e^s_k g_k).
    d = w @ J
    proj = (J @ d) / J.norm(dim=1)
    assert torch.allclose(proj, proj.mean().expand(3), rtol=1e-10)
    assert abs(float((w / e).sum()) - 1) < 1e-12
    # d/ds (e^s L - s) = e^s L - 1.
    grads = torch.stack([p.grad for p in m.log_scales])
    assert torch.allclose(grads, torch.exp(s) * losses - 1, rtol=1e-6)


def test_absent_task_scale_gets_no_gradient_and_state_round_trip() -> None:
    m = make("imtl", 3)
    J = random_jacobian(2, 5, seed=3)
    m.decide(torch.tensor([1.0, 2.0]), ["t0", "t2"], J @ J.T)
    assert m.log_scales[1].grad is None and m.log_scales[0].grad is not None
    other = make("imtl", 3)
    with torch.no_grad():
        m.log_scales[2].fill_(0.7)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.scales(), m.scales())
