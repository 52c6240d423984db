"""DSelect-k, the task-routed sparse layer and cross-stitch units."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import manytask
from manytask import Task
from manytask.models.cross_stitch import CrossStitch
from manytask.models.dselect_k import DSelectK, smooth_step
from manytask.models.routing import expert_report
from manytask.models.sparse_moe import TaskRoutedMoE

TASKS = [Task.binary("a"), Task.regression("b"), Task.classification("c", 3)]


def targets(n: int) -> dict[str, torch.Tensor]:
    return {
        "a": torch.randint(0, 2, (n,)).float(),
        "b": torch.randn(n, 1),
        "c": torch.randint(0, 3, (n,)),
    }


def all_grads_nonzero(model: torch.nn.Module) -> list[str]:
    return [
        n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]


# ------------------------------------------------------------------ DSelect-k
def test_smooth_step_matches_its_definition() -> None:
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.3, 1.0, 4.0])
    expected = [
        0.0,
        0.0,
        -2 / 8 * -0.125 + 3 / 4 * -0.5 + 0.5,
        0.5,
        -2 / 8 * 0.027 + 3 / 4 * 0.3 + 0.5,
        1.0,
        1.0,
    ]
    torch.testing.assert_close(smooth_step(t, gamma), torch.tensor(expected))


@pytest.mark.parametrize("n_experts", [4, 5])
def test_dselect_gates_sum_to_one_and_select_one_expert_when_binary(n_experts: int) -> None:
    model = DSelectK(TASKS, 6, n_experts=n_experts, k=2, expert_hidden=(5,))
    x = torch.randn(8, 6)
    outputs, _ = model(x, return_features=True)
    for g in model.gate_weights.values():
        assert g.shape == (8, n_experts)
        torch.testing.assert_close(g.sum(-1), torch.ones(8))
    losses = manytask.task_losses(TASKS, outputs, targets(8))
    (sum(losses.values()) + model.regularization()).backward()
    assert all_grads_nonzero(model) == []
    # Saturate every selector: z = +-10 gives bits 1, 0, ... -> code 1 (bit 0 is the lowest)
    gates: Any = model.shared.gates
    with torch.no_grad():
        gates.z.weight.zero_()
        bias = torch.full_like(gates.z.bias, -10.0)
        bias.view(len(TASKS), 2, gates.n_bits)[:, :, 0] = 10.0  # bit 0 set: every selector picks 1
        gates.z.bias.copy_(bias)
    model(x)
    for g in model.gate_weights.values():
        torch.testing.assert_close(g, torch.eye(n_experts)[1].expand(8, -1))
    assert float(model.regularization().detach()) == 0.0


# ------------------------------------------------------------------ task-routed sparse MoE
def test_sparse_layer_runs_only_the_selected_experts() -> None:
    model = TaskRoutedMoE(TASKS, 6, n_experts=8, k=2, expert_hidden=(5,))
    chosen = model.selected_experts()
    used = sorted({e for idx in chosen.values() for e in idx})
    unused = [e for e in range(8) if e not in used]
    assert unused  # 3 tasks x 2 experts cannot cover 8 experts
    body: Any = model.shared
    with torch.no_grad():  # poison every unselected expert: any use would produce NaN
        for w in body.experts.weights:
            w[unused] = float("nan")
    x = torch.randn(4, 6)
    outputs = model(x)
    assert all(bool(torch.isfinite(o).all()) for o in outputs.values())
    assert body.last_active.tolist() == used
    for t, g in model.gate_weights.items():
        assert sorted(g[0].nonzero().flatten().tolist()) == chosen[t]
        torch.testing.assert_close(g.sum(), torch.tensor(1.0))
    # One task alone: only its k experts run; poisoning all others leaves it finite and equal.
    with torch.no_grad():
        for w in body.experts.weights:
            w[[e for e in range(8) if e not in chosen["a"]]] = float("nan")
    alone = model.forward_task(x, "a")
    assert body.last_active.tolist() == chosen["a"]
    torch.testing.assert_close(alone, outputs["a"])


def test_sparse_layer_trains_routers_and_reports_unused_experts() -> None:
    model = TaskRoutedMoE(TASKS[:2], 6, n_experts=6, k=2, expert_hidden=(5,))
    x = torch.randn(16, 6)
    outputs = model(x)
    losses = manytask.task_losses(
        TASKS[:2], outputs, {k: v for k, v in targets(16).items() if k != "c"}
    )
    torch.stack(list(losses.values())).sum().backward()
    body: Any = model.shared
    grad = body.router.grad
    chosen = model.selected_experts()
    for i, t in enumerate(["a", "b"]):
        others = [e for e in range(6) if e not in chosen[t]]
        assert bool((grad[i, chosen[t]] != 0).all()) and bool((grad[i, others] == 0).all())
    report = expert_report(model, x)
    used = {e for idx in chosen.values() for e in idx}
    assert report.unused == sorted(f"expert/{e}" for e in range(6) if e not in used)
    with pytest.raises(ValueError, match="exceeds"):
        TaskRoutedMoE(TASKS, 6, n_experts=2, k=3)


# ------------------------------------------------------------------ cross-stitch
def test_cross_stitch_mixes_columns_with_its_matrix() -> None:
    model = CrossStitch(TASKS[:2], 4, hidden=(5,), alpha_same=0.7)
    alpha = model.stitch_weights[0]
    torch.testing.assert_close(alpha, torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    x = torch.randn(3, 4)
    _, feats = model(x, return_features=True)
    body: Any = model.shared
    layer = body.layers[0]
    cols = [torch.relu(x @ layer.weights[0][i] + layer.biases[0][i]) for i in range(2)]
    torch.testing.assert_close(feats["a"], 0.7 * cols[0] + 0.3 * cols[1])
    torch.testing.assert_close(feats["b"], 0.3 * cols[0] + 0.7 * cols[1])


def test_cross_stitch_identity_units_make_independent_columns() -> None:
    model = CrossStitch(TASKS, 4, hidden=(5, 5), alpha_same=1.0)
    outputs = model(torch.randn(6, 4))
    assert math.isclose(float(model.stitch_weights[1].sum()), 3.0)
    outputs["a"].sum().backward()
    body: Any = model.shared
    for layer in body.layers:  # only column 0 reaches task a through identity units
        assert bool(layer.weights[0].grad[0].abs().sum() > 0)
        assert bool((layer.weights[0].grad[1:] == 0).all())
    with pytest.raises(ValueError, match="alpha_same"):
        CrossStitch(TASKS, 4, alpha_same=1.5)
