"""Issue 13 item 7: options that give the peers' conventions (GradVac's task order, Nash-MTL's
head weights under clipping, MGDA's l2 combination) and Aligned-MTL's rank decision."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import model_losses, random_jacobian, small_model

import manytask
from manytask.balancers import AlignedMTL, GradVac, NashMTL, make_balancer
from manytask.balancers.gradvac import gradvac_coefficients
from manytask.engine.gradients import gramian_of

NAMES = ("a", "b", "c")


def test_gradvac_fixed_order_is_the_algorithm_in_task_order() -> None:
    J = random_jacobian(3, 5, seed=1)
    G = J @ J.T
    method = GradVac(beta=0.3, shuffle=False)
    method.setup(NAMES)
    torch.manual_seed(0)
    state = torch.rand(3, 3, dtype=torch.float64) * 0.2  # a non-trivial similarity goal
    method.phi_hat.copy_(state)
    w = method.decide(torch.ones(3), NAMES, G).weights
    orders = torch.tensor([[1, 2], [0, 2], [0, 1]])
    coef, _ = gradvac_coefficients(G, state, orders, 0.3, 1e-8)
    assert torch.allclose(w, coef.sum(dim=0), atol=1e-12)
    # And it draws nothing from the global RNG.
    torch.manual_seed(5)
    before = torch.get_rng_state()
    method.decide(torch.ones(3), NAMES, G)
    assert torch.equal(before, torch.get_rng_state())


def test_nash_clip_shared_weights_heads_with_the_unclipped_alpha() -> None:
    grads = {}
    for clip in ("weights", "shared"):
        model = small_model(NAMES, seed=0)
        losses, feats = model_losses(model, NAMES)
        method = NashMTL(max_norm=1e-3, clip=clip)  # small: the update is clipped
        result = manytask.backward(losses, method, features=feats,
                                   shared_params=list(model.shared_parameters()),
                                   head_grad="weighted")
        grads[clip] = ({n: p.grad.clone() for n, p in model.named_parameters()},
                       torch.tensor([result.weights[n] for n in NAMES]))
    (g_w, w_w), (g_s, w_s) = grads["weights"], grads["shared"]
    assert torch.allclose(w_w, w_s)  # the shared update and reported weights are the same
    model = small_model(NAMES, seed=0)
    losses, feats = model_losses(model, NAMES)
    G = manytask.task_gradients(
        list(losses.values()), [feats], shared_params=list(model.shared_parameters())).gramian
    alpha = NashMTL(max_norm=0.0).alpha(G)  # unclipped
    factor = float(w_w[0] / alpha[0])
    assert factor < 1  # the clip acted
    for name, g in g_s.items():
        if not name.startswith("heads."):
            assert torch.allclose(g, g_w[name], atol=1e-7)
        else:  # heads: unclipped alpha_k under "shared", clipped under "weights"
            assert torch.allclose(g * factor, g_w[name], rtol=1e-5, atol=1e-9), name


def test_nash_clip_is_validated() -> None:
    with pytest.raises(ValueError, match="'nash_mtl': clip"):
        NashMTL(clip="heads")


def test_mgda_l2_combines_raw_or_normalised_gradients() -> None:
    J = torch.tensor([[3.0, 0.0, 1.0], [-0.5, 2.0, 0.0]], dtype=torch.float64)
    norms = J.norm(dim=1)
    u = J / norms[:, None]
    # Min-norm point of the segment [u1, u2], by hand: gamma u1 + (1 - gamma) u2.
    gamma = float((u[1] - u[0]) @ u[1] / (u[0] - u[1]).norm() ** 2)
    weights = torch.tensor([gamma, 1 - gamma], dtype=torch.float64)
    G = J @ J.T
    for combine, expected in (("raw", weights), ("normalized", weights / norms)):
        method = make_balancer("mgda", normalization="l2", combine=combine)
        method.setup(("a", "b"))
        w = method.decide(torch.ones(2), ("a", "b"), G).weights
        assert torch.allclose(w, expected, atol=1e-12), combine
    # "normalized" is the min-norm point of the unit gradients' hull itself.
    assert float((u.T @ weights) @ u[0]) == pytest.approx(float((u.T @ weights) @ u[1]))


@pytest.mark.parametrize("seed", range(5))
def test_aligned_mtl_rank_is_stable_on_two_nearly_identical_tasks(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(50, generator=gen)
    J = torch.stack([g, g + 1e-5 * g.norm() * torch.randn(50, generator=gen) / 50**0.5])
    method = AlignedMTL()
    method.setup(("a", "b"))
    w = method.decide(torch.ones(2), ("a", "b"), gramian_of([J])).weights  # float32 gradients
    # Rank one, as the reference code decides it on the float32 Gramian: B = v1 v1^T, B 1 ~ 1.
    lam = torch.linalg.eigvalsh(J @ J.T)
    assert int((lam > lam.max() * 2 * torch.finfo(torch.float32).eps).sum()) == 1
    assert torch.allclose(w, torch.ones(2, dtype=torch.float64), atol=1e-4), w
