"""HoME: hierarchy masks, normalised experts, feature and self gates."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import manytask
from manytask import Task
from manytask.models.home import HoME

TASKS = [Task.binary("click"), Task.binary("like"), Task.regression("watch")]
GROUPS = {"interact": ["click", "like"], "passive": ["watch"]}


def build(**kw: Any) -> HoME:
    return HoME(
        TASKS,
        6,
        task_groups=GROUPS,
        n_global_experts=1,
        n_group_experts=2,
        n_task_experts=1,
        expert_hidden=(5,),
        feature_gate_rank=2,
        **kw,
    )


def test_shapes_gradients_and_gates() -> None:
    model = build()
    x = torch.randn(12, 6)
    outputs = model(x)
    assert {t: o.shape for t, o in outputs.items()} == {
        "click": (12, 1),
        "like": (12, 1),
        "watch": (12, 1),
    }
    y = {
        "click": torch.randint(0, 2, (12,)).float(),
        "like": torch.randint(0, 2, (12,)).float(),
        "watch": torch.randn(12, 1),
    }
    manytask.backward(manytask.task_losses(TASKS, outputs, y), manytask.make_balancer("equal"))
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.endswith("gate_a"):  # B = 0 at init, so dL/dA = dL/d(AB) B^T = 0 (as in LoRA)
            assert bool((p.grad == 0).all()), name
        else:
            assert bool(p.grad.abs().sum() > 0), name
    gates, experts = model.gate_weights, model.gate_experts
    assert set(gates) == {
        "meta/interact",
        "meta/passive",
        "meta/global",
        "task/click",
        "task/like",
        "task/watch",
    }
    for name, g in gates.items():
        torch.testing.assert_close(g.sum(-1), torch.ones(12))
        # hierarchy mask: a unit never routes to another group's or another task's experts
        used = {experts[name][i] for i in range(g.shape[1]) if bool((g[:, i] > 0).any())}
        if name == "task/click":
            assert used == {
                "task/task:click/0",
                "task/group:interact/0",
                "task/group:interact/1",
                "task/global/0",
            }
        if name == "meta/passive":
            assert used == {"meta/group:passive/0", "meta/group:passive/1", "meta/global/0"}
        if name == "meta/global":
            assert len(used) == 5


def test_meta_unit_by_hand_in_eval_mode() -> None:
    model = build().eval()
    meta: Any = model.shared.meta
    with torch.no_grad():  # a non-trivial feature gate
        meta.gate_b.normal_()
    x = torch.randn(4, 6)
    out = meta({"input": x})
    e = meta.experts
    hs = []
    for i in range(5):
        v = x * 2 * torch.sigmoid(x @ meta.gate_a[i] @ meta.gate_b[i])
        pre = v @ e.weights[0][i] + e.biases[0][i]
        bn = slice(5 * i, 5 * i + 5)  # eval BN with fresh running stats: (x - 0) / sqrt(1 + eps)
        hs.append(
            F.silu(pre / (1 + meta.norm.eps) ** 0.5 * meta.norm.weight[bn] + meta.norm.bias[bn])
        )
    # expert order: global/0, group:interact/0..1, group:passive/0..1
    allowed = [1, 2, 0]
    logits = meta.gates.linears["interact"](x)[:, allowed]
    w = torch.softmax(logits, -1)
    ref = sum(w[:, j : j + 1] * hs[k] for j, k in enumerate(allowed))
    torch.testing.assert_close(out["interact"], ref)
    assert meta.self_gates is None


def test_task_unit_adds_its_input_through_the_self_gate() -> None:
    model = build().eval()
    task: Any = model.shared.task
    groups = {g: torch.randn(4, 5) for g in ("interact", "passive", "global")}
    with torch.no_grad():  # silence the experts' mixture: BN output scale 0 -> silu(0) = 0
        task.norm.weight.zero_()
        task.norm.bias.zero_()
    out = task(groups)
    m = groups["interact"]
    torch.testing.assert_close(out["click"], torch.sigmoid(task.self_gates["click"](m)) * m)


def test_feature_gate_starts_as_identity_and_groups_are_validated() -> None:
    model = build()
    meta: Any = model.shared.meta
    assert bool((meta.gate_b == 0).all())
    with pytest.raises(ValueError, match="exactly once"):
        HoME(TASKS, 6, task_groups={"a": ["click"], "b": ["like"]})
    with pytest.raises(ValueError, match="reserved"):
        HoME(TASKS, 6, task_groups={"global": ["click", "like", "watch"]})
    default = HoME(TASKS, 6, expert_hidden=(4,))
    default(torch.randn(3, 6))
    assert "meta/watch" in default.gate_weights
