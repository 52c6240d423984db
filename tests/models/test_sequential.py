"""ESMM and AITM (sequential click -> conversion tasks) and MTAN on a small conv trunk."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import manytask
from manytask import Task
from manytask.models.esmm import AITM, ESMM, logit_of_product
from manytask.models.inputs import TabularInput
from manytask.models.mtan import MTAN
from manytask.tabular_types import TabularX

FUNNEL = [Task.binary("click"), Task.binary("buy")]


def test_logit_of_product_is_exact_and_stable() -> None:
    a, b = torch.tensor([0.3, -2.0, 40.0, -80.0]), torch.tensor([1.1, 0.5, 45.0, 3.0])
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    out = logit_of_product(a, b)
    torch.testing.assert_close(torch.sigmoid(out[:2].double()), p[:2])
    assert bool(torch.isfinite(out).all())
    assert float(out[2]) > 15 and float(out[3]) < -75  # p ~ 1 and p ~ e^-80


def test_esmm_ctcvr_is_ctr_times_cvr_and_trains_both_towers() -> None:
    layer = TabularInput([6, 4], n_dense=1, embedding_dim=3)
    model = ESMM(FUNNEL, input_layer=layer, tower_hidden=(8,))
    x = TabularX(torch.randint(0, 4, (10, 2)), torch.randn(10, 1))
    outputs, feats = model(x, return_features=True)
    ctr = torch.sigmoid(model.heads["click"](feats))
    torch.testing.assert_close(torch.sigmoid(outputs["click"]), ctr)
    torch.testing.assert_close(
        torch.sigmoid(outputs["buy"]), ctr * model.cvr(x), rtol=1e-5, atol=1e-6
    )
    click = torch.randint(0, 2, (10,)).float()
    buy = click * torch.randint(0, 2, (10,)).float()  # conversions only after clicks
    losses = manytask.task_losses(FUNNEL, outputs, {"click": click, "buy": buy})
    losses["buy"].backward()  # the CTCVR loss alone reaches both towers and the embeddings
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    with pytest.raises(ValueError, match="must be binary"):
        ESMM([Task.binary("a"), Task.regression("b")], 3)


def test_aitm_attention_transfer_and_calibration() -> None:
    tasks = [*FUNNEL, Task.binary("repay")]
    model = AITM(tasks, 5, tower_hidden=(6,), calibration_weight=0.5)
    x = torch.randn(7, 5)
    outputs = model(x)
    assert set(model.last_attention) == {"buy", "repay"}
    for w in model.last_attention.values():
        assert w.shape == (7, 2)
        torch.testing.assert_close(w.sum(-1), torch.ones(7))
    # The first task ignores later modules; the second reads the first task's tower.
    outputs["click"].sum().backward()
    assert model.outputs["buy"].weight.grad is None
    model.zero_grad()
    outputs = model(x)
    outputs["buy"].sum().backward()
    tower: Any = model.heads["click"]
    assert bool(tower[0].weight.grad.abs().sum() > 0)
    p = [torch.sigmoid(outputs[t.name]).reshape(-1) for t in tasks]
    expected = 0.5 * (torch.relu(p[1] - p[0]).mean() + torch.relu(p[2] - p[1]).mean())
    torch.testing.assert_close(model.calibration_penalty(outputs), expected)


def small_trunk() -> tuple[list[Any], list[int]]:
    blocks: list[Any] = [
        (
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        ),
        nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
    ]
    return blocks, [4, 6]


def test_mtan_shapes_masks_and_gradients() -> None:
    tasks = [Task.classification("digit", 10), Task.regression("size")]
    blocks, channels = small_trunk()
    model = MTAN(tasks, blocks, channels)
    x = torch.randn(5, 3, 8, 8)
    outputs, feats = model(x, return_features=True)
    assert outputs["digit"].shape == (5, 10) and outputs["size"].shape == (5, 1)
    assert feats["digit"].shape == (5, 6, 4, 4)
    masks = model.attention_masks
    assert set(masks) == {"block1/digit", "block1/size", "block2/digit", "block2/size"}
    assert all(bool(((m > 0) & (m < 1)).all()) for m in masks.values())
    y = {"digit": torch.randint(0, 10, (5,)), "size": torch.randn(5, 1)}
    manytask.backward(manytask.task_losses(tasks, outputs, y), manytask.make_balancer("equal"))
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert missing == []


def test_mtan_with_an_open_mask_returns_the_shared_features() -> None:
    tasks = [Task.regression("a"), Task.regression("b")]
    blocks, channels = small_trunk()
    model = MTAN(tasks, blocks, channels).eval()
    body: Any = model.shared
    with torch.no_grad():  # last BN of every mask: shift far positive -> sigmoid = 1
        for per_task in body.attention:
            for att in per_task.values():
                att[1][1].bias.fill_(50.0)
    x = torch.randn(2, 3, 8, 8)
    _, feats = model(x, return_features=True)
    shared = x
    for first, rest in zip(body.firsts, body.rests, strict=True):
        shared = rest(first(shared))
    torch.testing.assert_close(feats["a"], shared)
    with pytest.raises(ValueError, match="blocks but"):
        MTAN(tasks, blocks, [4])
