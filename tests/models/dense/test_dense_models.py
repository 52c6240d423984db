"""Dense architectures: shapes, where gradients go, defining properties, and training."""

from __future__ import annotations

import pytest
import torch

import manytask
from manytask.data.dense import DenseBatches, DenseData
from manytask.dense import DenseTask
from manytask.models.dense import (
    DenseCrossStitch,
    DenseHardSharing,
    ResNetBackbone,
    SegNetBackbone,
    dense_mtan,
)

TASKS = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal(),
         DenseTask.edge()]


def small_resnet() -> ResNetBackbone:
    return ResNetBackbone((8, 12, 16), depth=1)


BUILDERS = {
    "hard_sharing_resnet": lambda: DenseHardSharing(TASKS, small_resnet(), head_hidden=8),
    "hard_sharing_segnet": lambda: DenseHardSharing(TASKS, SegNetBackbone((8, 12)), head_hidden=8),
    "mtan": lambda: dense_mtan(TASKS, small_resnet(), head_hidden=8),
    "cross_stitch": lambda: DenseCrossStitch(TASKS, small_resnet(), head_hidden=8),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_outputs_have_the_input_resolution_and_each_tasks_channels(name: str) -> None:
    torch.manual_seed(0)
    model = BUILDERS[name]()
    out = model(torch.randn(2, 3, 16, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (2, 5, 16, 16), "depth": (2, 1, 16, 16), "normal": (2, 3, 16, 16),
        "edge": (2, 1, 16, 16)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_head_gets_gradient_only_from_its_own_task(name: str) -> None:
    torch.manual_seed(0)
    model = BUILDERS[name]()
    data = DenseData.scenes(2, 16)
    losses = manytask.task_losses(TASKS, model(data.images), data.targets)
    losses["depth"].backward()
    for task, head in model.heads.items():
        grads = [p.grad for p in head.parameters()]
        if task == "depth":
            assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
        else:
            assert all(g is None for g in grads)
    assert any(p.grad is not None for p in model.shared_parameters())


def test_cross_stitch_with_identity_units_is_independent_networks() -> None:
    torch.manual_seed(0)
    model = DenseCrossStitch(TASKS[:2], small_resnet(), self_weight=1.0, head_hidden=8).eval()
    x = torch.randn(1, 3, 16, 16)
    feats = model.features(x)
    body = model.shared
    for i, task in enumerate(("semantic", "depth")):
        torch.testing.assert_close(feats[task], body.columns[i](x))


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_gradient_methods_train_dense_tasks_in_both_modes(mode: str) -> None:
    torch.manual_seed(0)
    model = DenseHardSharing(TASKS, small_resnet(), head_hidden=8)
    method = manytask.make_balancer("mgda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = DenseBatches(DenseData.scenes(8, 16), 4, shuffle=True)
    first = None
    for _ in range(4):
        for x, targets in batches:
            outputs, feats = model(x, return_features=True)
            losses = manytask.task_losses(TASKS, outputs, targets)
            result = manytask.backward(losses, method, features=feats, mode=mode,
                                       shared_params=model.shared_parameters())
            opt.step()
            opt.zero_grad()
            first = first or sum(result.losses.values())
    assert sum(result.losses.values()) < first
    assert abs(sum(result.weights.values()) - 1.0) < 1e-6


def test_bf16_autocast_on_cpu_gives_finite_dense_losses() -> None:
    torch.manual_seed(0)
    model = dense_mtan(TASKS, small_resnet(), head_hidden=8)
    data = DenseData.scenes(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, feats = model(data.images, return_features=True)
        losses = manytask.task_losses(TASKS, {k: v.float() for k, v in outputs.items()},
                                      data.targets)
    result = manytask.backward(losses, manytask.make_balancer("mgda"), features=feats,
                               mode="feature")
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
