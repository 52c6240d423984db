"""The dense architectures of the papers: each one's defining property."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask.data.dense import DenseData
from manytask.dense import DenseTask
from manytask.models.dense import ResNetBackbone
from manytask.models.dense.branching import LearnToBranch
from manytask.models.dense.m3vit import M3ViT, TaskMoE
from manytask.models.dense.slimmable import ControllableMTL, distillation_loss, search_widths
from manytask.models.dense.taps import TAPS
from manytask.models.dense.taskexpert import TaskExpert

TASKS = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal()]


def backbone() -> ResNetBackbone:
    torch.manual_seed(0)
    return ResNetBackbone((8, 12, 16))


def test_taskexpert_gates_sum_to_one_per_pixel_and_memory_accumulates() -> None:
    model = TaskExpert(TASKS, backbone(), n_experts=3, width=8, head_hidden=8)
    out = model(torch.randn(2, 3, 16, 16))
    assert out["normal"].shape == (2, 3, 16, 16)
    gates = model.shared.last_gates
    assert len(gates) == 3 * len(TASKS)
    for g in gates.values():
        torch.testing.assert_close(g.sum(1), torch.ones_like(g.sum(1)))
    usage = model.expert_usage()
    assert all(abs(sum(u) - 1) < 1e-5 for u in usage.values())


def test_taps_with_all_gates_closed_is_the_shared_network() -> None:
    torch.manual_seed(0)
    model = TAPS(TASKS, ResNetBackbone((8, 12)), tau=0.1, init_score=0.5, head_hidden=8).eval()
    x = torch.randn(2, 3, 16, 16)
    body = model.shared
    with torch.no_grad():
        for layer in body.layers:
            for t in layer.deltas:
                layer.deltas[t].normal_()     # deltas that would change everything...
                layer.scores[t].fill_(0.05)   # ...behind closed gates
        feats = model.features(x)
        shared = body.backbone(x)             # the plain shared network (no task set)
    for t in feats:
        torch.testing.assert_close(feats[t], shared)
    assert model.open_gates() == dict.fromkeys(feats, 0.0)
    with torch.no_grad():                     # one open gate changes that task only
        body.layers[0].scores["depth"].fill_(1.0)
        feats = model.features(x)
    assert not torch.allclose(feats["depth"], shared)
    torch.testing.assert_close(feats["semantic"], shared)


def test_taps_scores_learn_through_the_straight_through_gate_and_penalty() -> None:
    model = TAPS(TASKS, ResNetBackbone((8, 12)), head_hidden=8)
    data = DenseData.scenes(2, 16, tasks=("semantic", "depth", "normal"))
    losses = manytask.task_losses(TASKS, model(data.images), data.targets)
    (sum(losses.values()) + 0.1 * model.sparsity_penalty()).backward()
    score = model.shared.layers[0].scores["depth"]
    assert score.grad is not None and score.grad.abs() > 0
    n = len(model.shared.layers) * len(TASKS)
    assert float(model.sparsity_penalty().detach()) == pytest.approx(0.5 * n)


def test_learn_to_branch_is_a_tree_in_evaluation() -> None:
    model = LearnToBranch(TASKS, backbone(), widths=[1, 2], head_hidden=8)
    body = model.shared
    with torch.no_grad():
        body.logits[0].copy_(torch.tensor([[0.0], [0.0]]))
        body.logits[1].copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]))
    model.eval()
    assert model.tree() == [[0, 0], [0, 1, 0]]
    x = torch.randn(1, 3, 16, 16)
    feats = model.features(x)
    with torch.no_grad():  # replay the chosen path by hand
        root = body.nodes[0][0](x)
        mid = [body.nodes[1][i](root) for i in range(2)]
        depth_path = body.nodes[2][1](mid[1])
    torch.testing.assert_close(feats["depth"], depth_path)
    model.train()
    model(x)["semantic"].sum().backward()   # Gumbel-softmax lets the choice learn
    assert body.logits[1].grad is not None


def test_m3vit_runs_only_the_chosen_tasks_experts_at_inference() -> None:
    torch.manual_seed(0)
    model = M3ViT(TASKS, image_size=16, patch=4, dim=16, depth=2, heads=2, n_experts=4,
                  top_k=1, head_hidden=8).eval()
    moe = next(m for m in model.modules() if isinstance(m, TaskMoE))
    with torch.no_grad():  # task "depth" routes every token to expert 2
        router = moe.routers["depth"]
        router.weight.zero_()
        router.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0]))
    model.only_task("depth")
    moe.calls = [0, 0, 0, 0]
    out = model(torch.randn(2, 3, 16, 16))
    assert list(out) == ["depth"] and out["depth"].shape == (2, 1, 16, 16)
    assert moe.calls == [0, 0, 1, 0]
    assert model.expert_usage()["moe1/depth"] == [0.0, 0.0, 1.0, 0.0]
    model.only_task(None)
    assert set(model(torch.randn(1, 3, 16, 16))) == {"semantic", "depth", "normal"}


def test_slimmable_full_width_is_the_full_network_and_search_respects_the_budget() -> None:
    torch.manual_seed(0)
    model = ControllableMTL(TASKS, channels=(8, 16), head_hidden=8, widths=(0.5, 1.0)).eval()
    x = torch.randn(2, 3, 16, 16)
    full = model(x)
    enc = model.shared.stages
    with torch.no_grad():  # the same computation with plain layers
        h = x
        for stage in enc:
            bn = stage.norms[-1]
            h = torch.relu(bn(stage.conv(h)))
        head = model.heads["depth"]
        y = head.out.conv(torch.relu(head.hidden.norms[-1](head.hidden.conv(h))))
        y = torch.nn.functional.interpolate(y, scale_factor=2, mode="bilinear")
    torch.testing.assert_close(full["depth"], y)
    model.set_widths(0.5, {"depth": 0.5})
    half = model(x)
    assert half["depth"].shape == full["depth"].shape
    assert float(distillation_loss(half, full)) > 0
    full_cost = sum(ControllableMTL(TASKS, channels=(8, 16), head_hidden=8,
                                    widths=(0.5, 1.0)).macs((3, 16, 16)).values())
    choice = search_widths(model, {"depth": 1.0, "semantic": 0.5}, full_cost // 2,
                           lambda m: {t: float(m.heads[t].hidden.width) for t in m.heads},
                           (3, 16, 16))
    assert choice.macs <= full_cost // 2
    assert sum(model.macs((3, 16, 16)).values()) == choice.macs
    with pytest.raises(ValueError, match="no configuration fits"):
        search_widths(model, {"depth": 1.0}, 10, lambda m: dict.fromkeys(m.heads, 0.0),
                      (3, 16, 16))


def test_medusa_masks_lie_in_the_unit_interval_and_scale_weights_sum_to_one() -> None:
    from manytask.models.dense.medusa import Medusa

    model = Medusa(TASKS, backbone(), width=8, head_hidden=8)
    out = model(torch.randn(2, 3, 16, 16))
    assert out["semantic"].shape == (2, 5, 16, 16)
    body = model.shared
    assert all(0.0 < m < 1.0 for m in body.last_masks.values())
    for w in body.last_scales.values():
        torch.testing.assert_close(w.sum(1), torch.ones_like(w.sum(1)))
