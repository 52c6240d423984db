"""Jacobian-level methods: GradDrop, ExcessMTL (both vs torchjd), MoCo (hand-computed)."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import make, names, random_jacobian

import manytask
from manytask.balancers import ExcessMTL, GradDrop, MoCo
from manytask.balancers.graddrop import graddrop_update


def _jd(method: object, J: torch.Tensor, tasks: list[str] | None = None) -> torch.Tensor:
    tasks = tasks or names(J.shape[0])
    d = method.decide(torch.ones(len(tasks)), tasks, J)  # type: ignore[attr-defined]
    assert d.update is not None
    return d.update


def test_graddrop_hand_computed() -> None:
    J = torch.tensor([[1.0, -2.0, 0.0, 3.0], [3.0, 2.0, 0.0, -1.0]])
    # Purities: (1 + 4/4)/2 = 1, (1 + 0/4)/2 = 0.5, zero column 0.5, (1 + 2/4)/2 = 0.75.
    u = torch.tensor([0.3, 0.6, 0.1, 0.9])
    got = graddrop_update(J, 0.0, u)
    # col0: P=1 > U keeps positives (both); col1: P=.5 < .6 keeps negatives (-2);
    # col3: P=.75 < .9 keeps negatives (-1).
    assert torch.equal(got, torch.tensor([4.0, -2.0, 0.0, -1.0]))
    assert torch.allclose(graddrop_update(J, 1.0, u), J.sum(0))  # full leak: the plain sum


def test_graddrop_agrees_with_torchjd() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(4, 50, seed=3)
    torch.manual_seed(7)
    expected = aggregation.GradDrop()(J)
    torch.manual_seed(7)
    assert torch.allclose(_jd(make("graddrop", 4), J), expected, atol=1e-12)


def test_excess_mtl_agrees_with_torchjd_over_steps() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for warm in (0, 2):
        theirs = aggregation.ExcessMTL(robust_step_size=0.5, n_warmup_steps=warm)
        ours = make("excess_mtl", 3, robust_step_size=0.5, n_warmup_steps=warm)
        for step in range(5):
            scales = torch.tensor([[1.0], [5.0], [0.2]], dtype=torch.float64)
            J = random_jacobian(3, 20, seed=step) * scales
            expected = theirs(J)
            assert torch.allclose(_jd(ours, J), expected, rtol=1e-6, atol=1e-9)


def test_excess_mtl_absent_task_and_state_round_trip() -> None:
    m = make("excess_mtl", 3)
    _jd(m, random_jacobian(3, 6, seed=1))
    before = m.sq_sum[1].clone()
    mass = float(m.alpha[[0, 2]].sum())
    _jd(m, random_jacobian(2, 6, seed=2), ["t0", "t2"])
    assert torch.equal(m.sq_sum[1], before)
    assert abs(float(m.alpha[[0, 2]].sum()) - mass) < 1e-12
    fresh = ExcessMTL()
    fresh.setup(names(3))
    fresh.load_state_dict(m.state_dict())  # the lazily sized buffer is resized on load
    J = random_jacobian(3, 6, seed=4)
    assert torch.equal(_jd(fresh, J), _jd(m, J))


def test_moco_hand_computed_two_steps() -> None:
    m = make("moco", 2, beta=0.5, gamma=0.1, rho=0.0)
    J1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    u1 = _jd(m, J1)
    # Step 1: y = J1 (first sight); lambda = Pi(1/2 - 0.1 * diag(1, 4) (1/2)) = Pi(.45, .3)
    # = (.575, .425) (the projection shifts both by .125).
    assert torch.allclose(m.lam, torch.tensor([0.575, 0.425], dtype=torch.float64))
    assert torch.allclose(u1, torch.tensor([0.575, 0.85], dtype=torch.float64))
    J2 = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    _jd(m, J2)
    # y = (2, 0), (0, 1): lambda - 0.1 * (4 * .575, 1 * .425) = (.345, .3825) -> (.48125, .51875)
    assert torch.allclose(m.tracked, torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(m.lam, torch.tensor([0.48125, 0.51875], dtype=torch.float64))


def test_moco_converges_to_mgda_on_fixed_gradients() -> None:
    J = random_jacobian(3, 5, seed=6)
    m = make("moco", 3, gamma=0.5 / float(torch.linalg.eigvalsh(J @ J.T)[-1]))
    for _ in range(3000):
        _jd(m, J)
    mgda = make("mgda", 3).decide(torch.ones(3), names(3), J @ J.T).weights
    assert torch.allclose(m.lam @ J, mgda @ J, atol=1e-6)


def test_moco_absent_task_and_invalid_parameters() -> None:
    m = make("moco", 3)
    _jd(m, random_jacobian(2, 4, seed=1), ["t0", "t2"])
    assert not bool(m.seen[1]) and torch.all(m.tracked[1] == 0)
    assert abs(float(m.lam.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="beta"):
        MoCo(beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        MoCo(gamma=-1.0)
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=2.0)
    with pytest.raises(ValueError, match="robust_step_size"):
        ExcessMTL(robust_step_size=0.0)


@pytest.mark.parametrize("name", ["graddrop", "excess_mtl", "moco"])
def test_through_backward_exact_equals_feature_when_features_are_the_parameters(
    name: str,
) -> None:
    theta = torch.nn.Parameter(torch.randn(5))
    heads = [torch.randn(5) for _ in range(3)]
    results: list[torch.Tensor] = []
    for mode in ("exact", "feature"):
        torch.manual_seed(0)
        theta.grad = None
        z = theta * 1.0  # features equal to the parameter: both Jacobians coincide
        losses = {f"t{i}": ((z * h).sum() - i) ** 2 for i, h in enumerate(heads)}
        method = make(name, 3)
        manytask.backward(losses, method, features=z, shared_params=[theta], mode=mode)
        assert theta.grad is not None
        results.append(theta.grad.clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)
