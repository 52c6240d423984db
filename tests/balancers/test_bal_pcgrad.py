"""PCGrad against a direct explicit-vector implementation of Algorithm 1, and torchjd."""

from __future__ import annotations

import pytest
import torch
from bal_helpers import random_jacobian

from manytask.balancers import PCGrad
from manytask.balancers.pcgrad import pcgrad_coefficients


def explicit_pcgrad(
    J: torch.Tensor, orders: list[list[int]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm 1 on explicit vectors: returns the update and each projected g_i."""
    projected = []
    for i in range(J.shape[0]):
        g = J[i].clone()
        for j in orders[i]:
            if j == i:
                continue
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        projected.append(g)
    return torch.stack(projected).sum(0), projected


def _decide(G: torch.Tensor, shuffle: bool) -> torch.Tensor:
    names = [f"t{i}" for i in range(G.shape[0])]
    m = PCGrad(shuffle=shuffle)
    m.setup(names)
    return m.decide(torch.ones(len(names)), names, G).weights


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_fixed_order_equals_explicit_algorithm(k: int) -> None:
    J = random_jacobian(k, 6, seed=k)
    expected, projected = explicit_pcgrad(J, [list(range(k))] * k)
    w = _decide(J @ J.T, shuffle=False)
    assert torch.allclose(w @ J, expected, atol=1e-10)
    rows = pcgrad_coefficients(J @ J.T, torch.arange(k).expand(k, k)) @ J
    assert torch.allclose(rows, torch.stack(projected), atol=1e-10)


@pytest.mark.parametrize("k", [3, 6])
def test_each_projection_leaves_no_conflict_with_its_gradient(k: int) -> None:
    # Stop our vectorised loop after step s (later steps made no-ops by pointing each task at
    # itself): every projected g_i must then be conflict-free with the g_j just used.
    J = random_jacobian(k, 3, seed=k)  # k gradients in 3 dimensions: many conflicts
    G = J @ J.T
    orders = torch.stack([torch.randperm(k) for _ in range(k)])
    conflicts = 0
    for s in range(k):
        truncated = orders.clone()
        truncated[:, s + 1 :] = torch.arange(k)[:, None]
        rows = pcgrad_coefficients(G, truncated) @ J
        for i in range(k):
            j = int(orders[i, s])
            if j != i:
                assert float(rows[i] @ J[j]) >= -1e-10 * float(G.diagonal().max())
        conflicts += int(((pcgrad_coefficients(G, truncated) @ G) < -1e-9).sum())
    assert conflicts > 0  # the case is not trivial: conflicts exist along the way


def test_conflicts_with_earlier_tasks_can_remain_as_in_algorithm_1() -> None:
    # Algorithm 1 does not guarantee that the final g_i^PC is conflict-free with a g_j it was
    # projected against earlier (a later projection can bring the conflict back); we reproduce
    # the algorithm, not a stronger property. Three gradients in the plane:
    J = random_jacobian(3, 2, seed=188)
    _, projected = explicit_pcgrad(J, [[0, 1, 2]] * 3)
    rows = pcgrad_coefficients(J @ J.T, torch.arange(3).expand(3, 3)) @ J
    assert torch.allclose(rows, torch.stack(projected), atol=1e-12)
    assert float(rows[0] @ J[1]) < -1e-3


def test_shuffled_order_equals_explicit_algorithm_with_same_draws() -> None:
    J = random_jacobian(5, 7, seed=11)
    torch.manual_seed(123)
    orders = [torch.randperm(5).tolist() for _ in range(5)]
    torch.manual_seed(123)
    w = _decide(J @ J.T, shuffle=True)
    assert torch.allclose(w @ J, explicit_pcgrad(J, orders)[0], atol=1e-10)


def test_two_tasks_closed_form_and_no_conflict_left() -> None:
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    w = _decide(J @ J.T, shuffle=False)
    # By hand: g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1).
    rows = pcgrad_coefficients(J @ J.T, torch.arange(2).expand(2, 2)) @ J
    assert torch.allclose(rows, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert float(rows[0] @ J[1]) >= -1e-12 and float(rows[1] @ J[0]) >= -1e-12
    assert torch.allclose(w @ J, torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_no_conflict_gives_the_sum() -> None:
    J = torch.rand(4, 5, dtype=torch.float64)  # non-negative entries: no negative dot product
    assert torch.equal(_decide(J @ J.T, shuffle=True), torch.ones(4, dtype=torch.float64))


def test_permutation_behaviour() -> None:
    # Two tasks: the order is irrelevant, so permuting tasks permutes the weights.
    J = random_jacobian(2, 4, seed=5)
    w, wp = _decide(J @ J.T, False), _decide(J.flip(0) @ J.flip(0).T, False)
    assert torch.allclose(wp, w.flip(0))
    # K > 2 with shuffle=False: the fixed order is that of the tasks as passed, so a permuted
    # input is the explicit algorithm run in the permuted order (not a permutation in general).
    J = random_jacobian(4, 3, seed=6)
    perm = torch.tensor([2, 0, 3, 1])
    wp = _decide(J[perm] @ J[perm].T, False)
    assert torch.allclose(
        wp @ J[perm], explicit_pcgrad(J[perm], [list(range(4))] * 4)[0], atol=1e-10
    )


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_agrees_with_torchjd_on_identical_draws(k: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = random_jacobian(k, 12, seed=k)
    # torchjd draws torch.randperm(K) once per task from the global RNG, as we do.
    torch.manual_seed(7)
    ours = _decide(J @ J.T, shuffle=True) @ J
    torch.manual_seed(7)
    theirs = aggregation.PCGrad()(J)
    assert torch.allclose(ours, theirs, atol=1e-10)
