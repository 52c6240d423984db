"""OMoE, MMoE, CGC, PLE and AdaTT: shapes, gradients, gates, and hand-computed forwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from grad_helpers import per_task_grads

import manytask
from manytask import Task
from manytask.engine.gradients import task_gradients
from manytask.models import ARCHITECTURES, make_model
from manytask.models.adatt import AdaTT
from manytask.models.experts import ExpertSet
from manytask.models.inputs import TabularInput
from manytask.models.moe import MMoE, OMoE
from manytask.models.ple import CGC, PLE
from manytask.models.routing import expert_report
from manytask.tabular_types import TabularX

TASKS = [Task.binary("click"), Task.regression("time", 2), Task.classification("kind", 3)]
ARCHS = [
    lambda tasks, **kw: MMoE(tasks, n_experts=4, expert_hidden=(8, 6), **kw),
    lambda tasks, **kw: OMoE(tasks, n_experts=3, expert_hidden=(6,), **kw),
    lambda tasks, **kw: CGC(tasks, n_task_experts=2, n_shared_experts=1, expert_hidden=(6,), **kw),
    lambda tasks, **kw: PLE(
        tasks, n_levels=3, n_task_experts=1, n_shared_experts=2, expert_hidden=(6,), **kw
    ),
    lambda tasks, **kw: AdaTT(
        tasks, n_levels=2, n_task_experts=2, n_shared_experts=1, expert_hidden=(6,), **kw
    ),
]


def shared(model: Any) -> Any:
    """The shared body, untyped: the tests reach into its parts."""
    return model.shared


def targets(n: int) -> dict[str, torch.Tensor]:
    return {
        "click": torch.randint(0, 2, (n,)).float(),
        "time": torch.randn(n, 2),
        "kind": torch.randint(0, 3, (n,)),
    }


@pytest.mark.parametrize("build", ARCHS)
def test_shapes_and_every_parameter_gets_a_gradient(build) -> None:
    layer = TabularInput([5, 7, 3], n_dense=2, embedding_dim=4)
    model = build(TASKS, input_layer=layer)
    x = TabularX(torch.randint(0, 3, (10, 3)), torch.randn(10, 2))
    outputs, feats = model(x, return_features=True)
    assert {t: o.shape for t, o in outputs.items()} == {
        "click": (10, 1),
        "time": (10, 2),
        "kind": (10, 3),
    }
    assert set(feats) == {"click", "time", "kind"}
    losses = manytask.task_losses(TASKS, outputs, targets(10))
    manytask.backward(losses, manytask.make_balancer("equal"))
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("build", ARCHS)
def test_gates_sum_to_one_and_name_their_experts(build) -> None:
    model = build(TASKS, in_features=5)
    model(torch.randn(7, 5))
    gates, experts = model.gate_weights, model.gate_experts
    assert gates and set(gates) == set(experts)
    for name, g in gates.items():
        assert g.shape == (7, len(experts[name]))
        assert bool((g >= 0).all())
        torch.testing.assert_close(g.sum(-1), torch.ones(7))


@pytest.mark.parametrize("build", ARCHS)
def test_losses_reach_shared_parameters_only_through_features(build) -> None:
    # The contract behind manytask.backward: exact per-task gradients computed from the
    # features by one batched backward equal each loss's own gradient.
    model = build(TASKS, in_features=5)
    outputs, feats = model(torch.randn(9, 5), return_features=True)
    losses = manytask.task_losses(TASKS, outputs, targets(9))
    values = list(losses.values())
    params = list(model.shared_parameters())
    grads = task_gradients(values, list(feats.values()), mode="exact", shared_params=params)
    jac = per_task_grads(values, params)
    torch.testing.assert_close(grads.gramian, jac @ jac.T, rtol=1e-4, atol=1e-8)


def test_expert_set_matches_separate_mlps() -> None:
    experts = ExpertSet(3, [4, 5, 2], last_activation=False)
    x = torch.randn(6, 4)
    per_expert_x = torch.randn(3, 6, 4)
    for inputs in (x, per_expert_x):
        out = experts(inputs)
        for e in range(3):
            xe = inputs if inputs.dim() == 2 else inputs[e]
            h = F.relu(xe @ experts.weights[0][e] + experts.biases[0][e])
            ref = h @ experts.weights[1][e] + experts.biases[1][e]
            torch.testing.assert_close(out[e], ref)
    idx = torch.tensor([2, 0])
    torch.testing.assert_close(experts(x, idx), experts(x)[idx])


def test_mmoe_mixture_is_softmax_gate_times_experts() -> None:
    model = MMoE(TASKS[:2], 4, n_experts=3, expert_hidden=(5,))
    x = torch.randn(6, 4)
    _, feats = model(x, return_features=True)
    body = shared(model)
    w, b = body.gates.weight, body.gates.bias
    for i, task in enumerate(["click", "time"]):
        rows = slice(3 * i, 3 * i + 3)  # gate i's block of the stacked gate layer
        gate = torch.softmax(x @ w[rows].T + b[rows], dim=-1)
        experts = [
            F.relu(x @ body.experts.weights[0][e] + body.experts.biases[0][e]) for e in range(3)
        ]
        ref = sum(gate[:, e : e + 1] * experts[e] for e in range(3))
        torch.testing.assert_close(feats[task], ref)
        torch.testing.assert_close(model.gate_weights[task], gate)


def test_omoe_gives_every_task_the_same_mixture() -> None:
    model = OMoE(TASKS, 4, n_experts=3)
    _, feats = model(torch.randn(5, 4), return_features=True)
    torch.testing.assert_close(feats["click"], feats["kind"])
    assert list(model.gate_weights) == ["shared"]


def test_cgc_task_features_ignore_other_tasks_experts() -> None:
    model = CGC(TASKS[:2], 4, n_task_experts=2, n_shared_experts=1, expert_hidden=(5,))
    x = torch.randn(6, 4)
    _, before = model(x, return_features=True)
    gate = model.gate_weights["level1/click"]
    names = model.gate_experts["level1/click"]
    other = [i for i, n in enumerate(names) if "/time/" in n]
    assert bool((gate[:, other] == 0).all())
    with torch.no_grad():  # scramble the "time" task's experts (indices 2 and 3)
        for w in shared(model).levels[0].experts.weights:
            w[2:4] = torch.randn_like(w[2:4])
    _, after = model(x, return_features=True)
    torch.testing.assert_close(after["click"], before["click"])
    assert not torch.allclose(after["time"], before["time"])


def test_ple_second_level_experts_read_their_groups_output() -> None:
    model = PLE(TASKS[:2], 4, n_levels=2, n_task_experts=1, n_shared_experts=1, expert_hidden=(5,))
    x = torch.randn(6, 4)
    _, feats = model(x, return_features=True)
    lvl1, lvl2 = shared(model).levels
    h1 = lvl1(x)
    e = lvl2.experts
    # Level-2 experts: "click" reads h1["click"], "time" reads h1["time"], shared reads shared.
    inputs = [h1["click"], h1["time"], h1["_shared"]]
    outs = torch.stack([F.relu(inputs[i] @ e.weights[0][i] + e.biases[0][i]) for i in range(3)])
    for t, own, gate_in in (("click", 0, h1["click"]), ("time", 1, h1["time"])):
        lin = lvl2.gates.linears[t]
        logits = lin(gate_in)[:, [own, 2]]
        g = torch.softmax(logits, dim=-1)
        ref = g[:, :1] * outs[own] + g[:, 1:] * outs[2]
        torch.testing.assert_close(feats[t], ref)


def test_adatt_one_expert_per_task_adds_its_own_expert() -> None:
    model = AdaTT(TASKS[:2], 4, n_levels=1, n_task_experts=1, expert_hidden=(5,))
    x = torch.randn(6, 4)
    _, feats = model(x, return_features=True)
    lvl = shared(model).levels[0]
    outs = torch.stack(
        [F.relu(x @ lvl.experts.weights[0][i] + lvl.experts.biases[0][i]) for i in range(2)]
    )
    for i, t in enumerate(["click", "time"]):
        g = torch.softmax(lvl.gates.linears[t](x), dim=-1)  # over all experts of the level
        ref = g[:, :1] * outs[0] + g[:, 1:] * outs[1] + outs[i]
        torch.testing.assert_close(feats[t], ref)


def test_expert_report_finds_dead_and_identical_experts() -> None:
    model = MMoE(TASKS[:2], 4, n_experts=4, expert_hidden=(5,))
    x = torch.randn(32, 4)
    healthy = expert_report(model, x)
    assert healthy.healthy, healthy.messages()
    with torch.no_grad():
        body = shared(model)
        body.gates.bias[[3, 7]] = -50.0  # no gate routes to expert 3
        for p in (body.experts.weights[0], body.experts.biases[0]):
            p[1] = p[0]  # expert 1 duplicates expert 0
    report = expert_report(model, x)
    assert report.unused == ["expert/3"]
    assert report.identical == [("expert/0", "expert/1")]
    assert len(report.messages()) == 2


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MMoE(TASKS, 4, n_experts=0), "n_experts"),
        (lambda: MMoE(TASKS, None), "in_features"),
        (lambda: MMoE(TASKS, 4, expert_hidden=()), "expert_hidden"),
        (lambda: PLE(TASKS, 4, n_task_experts=0, n_shared_experts=0), "expert"),
        (lambda: PLE([Task.binary("_shared")], 4), "_shared"),
        (lambda: AdaTT(TASKS, 4, n_task_experts=0), "n_task_experts"),
        (lambda: MMoE([Task.binary("a"), Task.binary("a")], 4), "unique"),
    ],
)
def test_bad_configurations_raise(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_factory_builds_every_architecture_on_a_tabular_input(name: str) -> None:
    layer = TabularInput([5, 7], n_dense=3, embedding_dim=4)
    model = make_model(name, TASKS, input_layer=layer)
    outputs = model(TabularX(torch.randint(0, 5, (4, 2)), torch.randn(4, 3)))
    assert {t: o.shape[1] for t, o in outputs.items()} == {"click": 1, "time": 2, "kind": 3}
    # the input layer belongs to the shared part
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in layer.parameters())


def test_factory_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'moe'"):
        make_model("moe", TASKS, in_features=3)


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_exact_gramian_through_embeddings_matches_per_task_gradients(name: str) -> None:
    layer = TabularInput([5, 7], n_dense=3, embedding_dim=4)
    model = make_model(name, TASKS, input_layer=layer)
    x = TabularX(torch.randint(0, 5, (8, 2)), torch.randn(8, 3))
    outputs, feats = model(x, return_features=True)
    values = list(manytask.task_losses(TASKS, outputs, targets(8)).values())
    params = list(model.shared_parameters())
    gram = task_gradients(
        values,
        list(feats.values()) if isinstance(feats, dict) else [feats],
        mode="exact",
        shared_params=params,
    ).gramian
    jac = per_task_grads(values, params)
    torch.testing.assert_close(gram, jac @ jac.T, rtol=1e-4, atol=1e-8)
