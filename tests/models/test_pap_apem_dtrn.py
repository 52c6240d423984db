"""APEM and DTRN: hand-computed modules, task-specific paths, and the features contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from grad_helpers import per_task_grads

import manytask
from manytask import Task
from manytask.engine.gradients import task_gradients
from manytask.models import make_model
from manytask.models.apem import APEM
from manytask.models.dtrn import DTRN
from manytask.models.inputs import TabularInput
from manytask.models.ple import SHARED
from manytask.tabular_types import TabularX

TASKS = [Task.binary("click"), Task.regression("time"), Task.classification("kind", 3)]


def body(model: Any) -> Any:
    return model.shared


def targets(n: int) -> dict[str, torch.Tensor]:
    return {
        "click": torch.randint(0, 2, (n,)).float(),
        "time": torch.randn(n, 1),
        "kind": torch.randint(0, 3, (n,)),
    }


BUILDS = {
    "apem": lambda **kw: APEM(TASKS, d_field=8, n_heads=2, **kw),
    "dtrn_mmoe": lambda **kw: DTRN(TASKS, d_field=4, n_experts=3, expert_hidden=(6,), **kw),
    "dtrn_ple": lambda **kw: DTRN(
        TASKS, d_field=4, top="ple", n_levels=2, expert_hidden=(6,), **kw
    ),
    "multitab": lambda **kw: make_model("multitab", TASKS, d_token=8, n_heads=2, **kw),
}


@pytest.mark.parametrize("name", BUILDS)
def test_every_parameter_gets_a_gradient_on_tabular_input(name: str) -> None:
    layer = TabularInput([5, 7], n_dense=3, embedding_dim=4)
    model = BUILDS[name](input_layer=layer)
    x = TabularX(torch.randint(0, 5, (10, 2)), torch.randn(10, 3))
    outputs = model(x)
    assert {t: o.shape for t, o in outputs.items()} == {
        "click": (10, 1),
        "time": (10, 1),
        "kind": (10, 3),
    }
    manytask.backward(
        manytask.task_losses(TASKS, outputs, targets(10)), manytask.make_balancer("equal")
    )
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), pname


@pytest.mark.parametrize("name", BUILDS)
def test_losses_reach_shared_parameters_only_through_features(name: str) -> None:
    model = BUILDS[name](in_features=5)
    outputs, feats = model(torch.randn(9, 5), return_features=True)
    values = list(manytask.task_losses(TASKS, outputs, targets(9)).values())
    params = list(model.shared_parameters())
    grads = task_gradients(values, list(feats.values()), mode="exact", shared_params=params)
    jac = per_task_grads(values, params)
    torch.testing.assert_close(grads.gramian, jac @ jac.T, rtol=1e-4, atol=1e-8)


def test_apem_excitation_and_selector_by_hand() -> None:
    model = APEM(TASKS[:2], 4, d_field=8, n_heads=2, se_ratio=2)
    x = torch.randn(6, 4)
    b = body(model)
    h = b.tokenizer(x)
    for block in b.blocks:
        h = block(h)
    se = b.excitation.excite
    z = torch.einsum("bfd,fd->bf", h, b.excitation.project)
    a = torch.sigmoid(se[2](torch.relu(se[0](z))))  # (batch, F)
    enriched = h * a.unsqueeze(-1)
    torch.testing.assert_close(b.enriched(x), enriched)
    sel = b.selector
    _, feats = model(x, return_features=True)
    for i, t in enumerate(["click", "time"]):
        q = sel.indicators[i] + sel.adapt(enriched.mean(1))  # (batch, d)
        s = torch.softmax(torch.einsum("bd,bfd->bf", q, sel.keys(enriched)) / 8**0.5, dim=-1)
        ref = (4 * s.unsqueeze(-1) * enriched).reshape(6, -1)
        torch.testing.assert_close(feats[t], ref)
        torch.testing.assert_close(model.gate_weights[f"selector/{t}"], s)
        assert model.gate_experts[f"selector/{t}"] == tuple(f"field/{j}" for j in range(4))


def test_apem_uniform_selection_passes_fields_unchanged() -> None:
    model = APEM(TASKS, 3, d_field=4, n_heads=1)
    with torch.no_grad():
        body(model).selector.keys.weight.zero_()
    x = torch.randn(5, 3)
    _, feats = model(x, return_features=True)
    enriched = body(model).enriched(x).reshape(5, -1)
    for t in ("click", "time", "kind"):
        torch.testing.assert_close(feats[t], enriched)


def test_apem_task_indicator_only_moves_its_own_task() -> None:
    model = APEM(TASKS, 4, d_field=4, n_heads=1)
    x = torch.randn(5, 4)
    _, before = model(x, return_features=True)
    with torch.no_grad():
        body(model).selector.indicators[0] += 3.0
    _, after = model(x, return_features=True)
    assert not torch.allclose(after["click"], before["click"])
    torch.testing.assert_close(after["time"], before["time"])
    torch.testing.assert_close(after["kind"], before["kind"])


@pytest.mark.parametrize("top", ["mmoe", "ple"])
def test_dtrn_task_specific_modules_only_move_their_own_task(top: str) -> None:
    model = DTRN(TASKS, 4, d_field=4, top=top, expert_hidden=(5,))
    x = torch.randn(6, 4)
    before = body(model).representations(x)
    with torch.no_grad():
        body(model).interest.task_embedding[1] += 1.0  # hypernetwork input of task "time"
        body(model).refinement.w2[1] += 1.0  # SENet of task "time"
    after = body(model).representations(x)
    assert not torch.allclose(after["time"], before["time"])
    torch.testing.assert_close(after["click"], before["click"])
    torch.testing.assert_close(after["kind"], before["kind"])
    assert set(after) == {"click", "time", "kind", SHARED}


def test_dtrn_bottom_by_hand() -> None:
    model = DTRN(TASKS[:2], 3, d_field=4, rank=2, se_ratio=1)
    x = torch.randn(5, 3)
    b = body(model)
    e = b.tokenizer(x)  # (5, F=3, 4)
    reps = b.representations(x)
    tim, trm = b.interest, b.refinement
    for k, t in enumerate(["click", "time"]):
        c = tim.task_embedding[k]
        scale = tim.hyper_scale(c)
        values = tim.base(e) + tim.up(tim.down(e) * scale)
        q = tim.hyper_query(c) + tim.context(e.mean(1))  # (5, 4)
        w = torch.softmax(torch.einsum("bd,bfd->bf", q, values) / 2.0, dim=-1)
        interest = torch.einsum("bf,bfd->bd", w, values)
        z = torch.einsum("bfd,fd->bf", e, trm.project)
        a = torch.sigmoid(torch.relu(z @ trm.w1[k] + trm.b1[k]) @ trm.w2[k] + trm.b2[k])
        ref = torch.cat([(a.unsqueeze(-1) * e).reshape(5, -1), interest], dim=-1)
        torch.testing.assert_close(reps[t], ref)


def test_dtrn_mmoe_top_runs_shared_experts_on_each_tasks_representation() -> None:
    model = DTRN(TASKS[:2], 3, d_field=4, n_experts=3, expert_hidden=(5,))
    x = torch.randn(6, 3)
    b = body(model)
    reps = b.representations(x)
    _, feats = model(x, return_features=True)
    for t in ("click", "time"):
        experts = b.top.experts(reps[t])  # (E, batch, 5): the same experts for every task
        gate = torch.softmax(b.top.gates.linears[t](reps[t]), dim=-1)
        torch.testing.assert_close(feats[t], torch.einsum("be,ebd->bd", gate, experts))
        torch.testing.assert_close(model.gate_weights[t], gate)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="top"):
        DTRN(TASKS, 3, top="cgc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        APEM(TASKS, 3, d_field=6, n_heads=4)
    with pytest.raises(ValueError, match="shared"):
        DTRN(TASKS, 3, top="ple", n_shared_experts=0)
