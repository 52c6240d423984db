"""manytask.backward: what reaches .grad, for loss-level and gradient-level methods."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

import manytask
from manytask import Decision, HardSharing, NonFiniteLossError, Task, task_losses
from manytask.balancers import (
    EqualWeighting,
    FixedWeights,
    GramianWeighting,
    JacobianAggregator,
)


class FixedCoefficients(GramianWeighting):
    """A gradient-level test double: returns preset coefficients (not registered)."""

    name = "test-fixed-coefficients"

    def __init__(self, coefficients: dict[str, float]) -> None:
        super().__init__()
        self.coefficients = coefficients
        self.seen: list[torch.Tensor] = []

    def decide(
        self, losses: torch.Tensor, tasks: Sequence[str], gramian: torch.Tensor
    ) -> Decision:
        self.seen.append(gramian)
        return Decision(torch.tensor([self.coefficients[t] for t in tasks], dtype=torch.float64))


def _problem(k: int = 3, batch: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    tasks = [Task.regression(f"t{i}") for i in range(k)]
    model = HardSharing(tasks, 4, hidden=(8,))
    x = torch.randn(batch, 4)
    targets = {t.name: torch.randn(batch, 1) for t in tasks}
    return tasks, model, x, targets


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _expected(model, tasks, x, targets, coef, head_scale):
    """Reference: per-task autograd, combined by hand."""
    out = model(x)
    losses = task_losses(tasks, out, targets)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for t, loss in losses.items():
        grads = torch.autograd.grad(
            loss, list(model.parameters()), retain_graph=True, allow_unused=True
        )
        for (n, _), g in zip(model.named_parameters(), grads, strict=True):
            if g is None:
                continue
            scale = coef[t] if n.startswith("shared.") else head_scale[t]
            expected[n] += scale * g
    return expected


@pytest.mark.parametrize("mode", ["exact", "feature"])
@pytest.mark.parametrize("head_grad", ["own", "weighted"])
def test_gradient_level_fills_shared_with_weighted_sum(mode: str, head_grad: str) -> None:
    tasks, model, x, targets = _problem()
    coef = {"t0": 0.2, "t1": 1.5, "t2": -0.3}
    heads = coef if head_grad == "weighted" else {t: 1.0 for t in coef}
    expected = _expected(model, tasks, x, targets, coef, heads)
    out, feats = model(x, return_features=True)
    result = manytask.backward(
        task_losses(tasks, out, targets),
        FixedCoefficients(coef),
        features=feats,
        shared_params=model.shared_parameters(),
        mode=mode,
        head_grad=head_grad,
    )  # type: ignore[arg-type]
    got = _grads(model)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert result.weights == pytest.approx(coef)
    assert result.cosine is not None and result.cosine.shape == (3, 3)


def test_gradients_accumulate_like_tensor_backward() -> None:
    tasks, model, x, targets = _problem()
    coef = {"t0": 1.0, "t1": 1.0, "t2": 1.0}
    for _ in range(2):
        out, feats = model(x, return_features=True)
        manytask.backward(
            task_losses(tasks, out, targets),
            FixedCoefficients(coef),
            features=feats,
            shared_params=model.shared_parameters(),
        )
    twice = _grads(model)
    model.zero_grad()
    out = model(x)
    sum(task_losses(tasks, out, targets).values()).backward()  # type: ignore[union-attr]
    for name, value in _grads(model).items():
        torch.testing.assert_close(twice[name], 2 * value, rtol=1e-5, atol=1e-7)


def test_loss_level_backpropagates_weighted_sum_everywhere() -> None:
    tasks, model, x, targets = _problem()
    weights = {"t0": 2.0, "t1": 0.5, "t2": 0.0}
    expected = _expected(model, tasks, x, targets, weights, weights)
    out = model(x)
    result = manytask.backward(task_losses(tasks, out, targets), FixedWeights(weights))
    for name, value in expected.items():
        torch.testing.assert_close(_grads(model)[name], value, rtol=1e-5, atol=1e-7)
    assert result.cosine is None


def test_absent_task_is_left_out_and_balancer_set_up_with_all_tasks() -> None:
    tasks, model, x, targets = _problem()
    balancer = FixedCoefficients({"t0": 1.0, "t1": 1.0, "t2": 1.0})
    balancer.setup([t.name for t in tasks])
    del targets["t1"]
    out, feats = model(x, return_features=True)
    result = manytask.backward(
        task_losses(tasks, out, targets),
        balancer,
        features=feats,
        shared_params=model.shared_parameters(),
    )
    assert result.tasks == ("t0", "t2")
    assert balancer.seen[-1].shape == (2, 2)
    assert model.heads["t1"][0].weight.grad is None


def test_nan_loss_raises_naming_task_and_step_and_touches_nothing() -> None:
    tasks, model, x, targets = _problem()
    out = model(x)
    losses = task_losses(tasks, out, targets)
    losses["t1"] = losses["t1"] * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"'t1'.*step 7"):
        manytask.backward(losses, EqualWeighting(), step=7)
    assert all(p.grad is None for p in model.parameters())


def test_bad_calls_have_clear_errors() -> None:
    tasks, model, x, targets = _problem()
    out, _feats = model(x, return_features=True)
    losses = task_losses(tasks, out, targets)
    with pytest.raises(ValueError, match="no task loss"):
        manytask.backward({}, EqualWeighting())
    with pytest.raises(ValueError, match="features="):
        manytask.backward(losses, FixedCoefficients({"t0": 1, "t1": 1, "t2": 1}))
    with pytest.raises(ValueError, match="scalar"):
        manytask.backward({"t0": torch.ones(2, requires_grad=True)}, EqualWeighting())
    with pytest.raises(ValueError, match="head_grad"):
        manytask.backward(losses, EqualWeighting(), head_grad="all")  # type: ignore[arg-type]


class ElementwiseMax(JacobianAggregator):
    """A Jacobian-level test double: per coordinate, the largest task gradient (not linear)."""

    name = "test-elementwise-max"

    def decide(self, losses, tasks, jacobian):
        return Decision(torch.ones(len(tasks), dtype=torch.float64), update=jacobian.max(0).values)


@pytest.mark.parametrize("mode", ["exact", "feature"])
def test_jacobian_level_update_reaches_shared_part(mode: str) -> None:
    tasks, model, x, targets = _problem()
    out, feats = model(x, return_features=True)
    losses = task_losses(tasks, out, targets)
    wrt = list(model.shared_parameters()) if mode == "exact" else [feats]
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, wrt, retain_graph=True)])
        for v in losses.values()
    ]
    expected = torch.stack(rows).max(0).values
    if mode == "feature":  # push the feature-level update through the trunk by hand
        shared = torch.autograd.grad(
            feats, list(model.shared_parameters()), expected.reshape(feats.shape), retain_graph=True
        )
        expected = torch.cat([g.reshape(-1) for g in shared])
    heads = _expected(
        model, tasks, x, targets, {t.name: 0.0 for t in tasks}, {t.name: 1.0 for t in tasks}
    )
    manytask.backward(
        losses, ElementwiseMax(), features=feats, shared_params=model.shared_parameters(), mode=mode
    )  # type: ignore[arg-type]
    got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    for name, value in heads.items():
        if name.startswith("heads."):
            torch.testing.assert_close(_grads(model)[name], value, rtol=1e-5, atol=1e-7)
