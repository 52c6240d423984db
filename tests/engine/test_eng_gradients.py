"""The gradient engine against per-task autograd, computed one task at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from manytask import HardSharing, Task, task_losses
from manytask.engine.gradients import cosine_similarity, task_gradients


def _setup(k: int = 3, batch: int = 16):
    tasks = [Task.regression(f"t{i}") for i in range(k)]
    model = HardSharing(tasks, 5, hidden=(7, 6))
    x = torch.randn(batch, 5)
    targets = {t.name: torch.randn(batch, 1) for t in tasks}
    outputs, feats = model(x, return_features=True)
    losses = task_losses(tasks, outputs, targets)
    return model, list(losses.values()), feats


def _reference_jacobian(losses, params):
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_exact_gramian_equals_per_task_autograd(k: int) -> None:
    model, losses, feats = _setup(k)
    params = list(model.shared_parameters())
    J = _reference_jacobian(losses, params)
    grads = task_gradients(losses, [feats], mode="exact", shared_params=params)
    torch.testing.assert_close(grads.gramian, J @ J.T, rtol=1e-5, atol=1e-8)
    assert grads.gramian.dtype == torch.float64


def test_feature_gramian_equals_gradient_wrt_features() -> None:
    _model, losses, feats = _setup(4)
    J = _reference_jacobian(losses, [feats])
    grads = task_gradients(losses, [feats], mode="feature")
    torch.testing.assert_close(grads.gramian, J @ J.T, rtol=1e-5, atol=1e-8)
    assert grads.feature_grads[0].shape == (4, *feats.shape)


def test_exact_and_feature_agree_when_shared_part_is_identity_on_parameters() -> None:
    # features = the shared parameter itself (broadcast over nothing): d/dz == d/dtheta.
    z = nn.Parameter(torch.randn(6))
    heads = [nn.Linear(6, 1) for _ in range(3)]
    feats = z * 1.0
    losses = [h(feats).pow(2).sum() for h in heads]
    exact = task_gradients(losses, [feats], mode="exact", shared_params=[z])
    feature = task_gradients(losses, [feats], mode="feature")
    torch.testing.assert_close(exact.gramian, feature.gramian)


def test_exact_mode_without_shared_params_is_an_error() -> None:
    _, losses, feats = _setup(2)
    with pytest.raises(ValueError, match="shared_params"):
        task_gradients(losses, [feats], mode="exact")
    with pytest.raises(ValueError, match="mode"):
        task_gradients(losses, [feats], mode="bogus")  # type: ignore[arg-type]


def test_cosine_of_gramian() -> None:
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]], dtype=torch.float64)
    cos = cosine_similarity(g @ g.T)
    expected = torch.nn.functional.cosine_similarity(g[:, None, :], g[None, :, :], dim=-1)
    torch.testing.assert_close(cos, expected)
    assert cos[0, 2] == pytest.approx(-1.0)
