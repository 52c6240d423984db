"""Properties every registered architecture has, parametrised over the registry (an
architecture gets them by registering): output shapes; each head gets gradient only from its
own task's loss; the heads read only the returned features; a state-dict round trip (through
safetensors) gives the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model, save_model

import manytask
from manytask.data import TabularX
from manytask.models import ARCHITECTURES, make_model
from manytask.models.inputs import TabularInput
from manytask.tasks import Task

TASKS = [Task.binary("click"), Task.regression("time", 2), Task.classification("kind", 3)]
NAMES = ARCHITECTURES.names()


def build(name: str, seed: int = 0) -> manytask.models.MultiTaskModel:
    torch.manual_seed(seed)
    return make_model(name, TASKS, input_layer=TabularInput([5, 7], n_dense=3,
                                                            embedding_dim=4)).eval()


def batch(n: int = 6, seed: int = 1) -> tuple[TabularX, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = TabularX(torch.randint(0, 5, (n, 2), generator=g), torch.randn(n, 3, generator=g))
    y = {"click": torch.randint(0, 2, (n,), generator=g).float(),
         "time": torch.randn(n, 2, generator=g),
         "kind": torch.randint(0, 3, (n,), generator=g)}
    return x, y


@pytest.mark.parametrize("name", NAMES)
def test_outputs_have_one_finite_row_per_example_and_task_width(name: str) -> None:
    x, _ = batch()
    outputs = build(name)(x)
    assert list(outputs) == [t.name for t in TASKS]
    for task in TASKS:
        assert outputs[task.name].shape == (6, task.out_features)
        assert torch.isfinite(outputs[task.name]).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_head_gets_gradient_only_from_its_own_task(name: str) -> None:
    model = build(name)
    x, y = batch()
    losses = manytask.task_losses(TASKS, model(x), y)
    for task in TASKS:
        model.zero_grad(set_to_none=True)
        losses[task.name].backward(retain_graph=True)
        for other, head in model.heads.items():
            grads = [p.grad for p in head.parameters()]
            reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
            assert reached == (other == task.name), (task.name, other)
        assert any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                   for p in model.shared_parameters()), task.name


@pytest.mark.parametrize("name", NAMES)
def test_heads_read_only_the_returned_features(name: str) -> None:
    model = build(name)
    x, _ = batch()
    outputs, features = model(x, return_features=True)
    detached = (features.detach() if isinstance(features, torch.Tensor) else
                {k: v.detach() for k, v in features.items()} if isinstance(features, dict)
                else tuple(f.detach() for f in features))
    again = model.heads_forward(detached)
    for task in TASKS:
        torch.testing.assert_close(again[task.name], outputs[task.name])
    # from detached features, no gradient reaches the shared part: the heads read nothing else
    model.zero_grad(set_to_none=True)
    sum(o.sum() for o in again.values()).backward()
    assert all(p.grad is None for p in model.shared_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_safetensors(name: str, tmp_path: Path) -> None:
    first, second = build(name, seed=0), build(name, seed=1)
    x, _ = batch()
    path = tmp_path / "model.safetensors"
    save_model(first, str(path))
    assert not all(torch.equal(a, b) for a, b in
                   zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    missing, unexpected = load_model(second, str(path))
    assert not missing and not unexpected
    a, b = first(x), second(x)
    for task in TASKS:
        assert torch.equal(a[task.name], b[task.name])
