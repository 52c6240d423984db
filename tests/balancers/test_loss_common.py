"""Properties every loss-level method must have: validation, absent tasks, finiteness,
state round trip, and a short training run through ``manytask.backward``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from losslevel_helpers import ALL, decide, grad_wrt_losses, make, set_scales
from torch import nn

import manytask
from manytask.balancers.registry import build

BAD_VALUES = {
    "rlw": {"total": "half"},
    "gls": {"eps": -1.0},
    "famo": {"lr": -0.1},
    "stch": {"mu": 0.0},
    "dbmtl": {"beta": 1.0},
}


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_is_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        build(name, {"not_a_parameter": 1})


@pytest.mark.parametrize(("name", "params"), sorted(BAD_VALUES.items()))
def test_out_of_range_value_is_rejected(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=name):
        build(name, params)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("famo", {"weight_decay": float("nan")}),
        ("famo", {"optimizer": "rmsprop"}),
        ("famo", {"eps": 0.0}),
        ("stch", {"mu": -1.0}),
        ("stch", {"warmup_steps": 2.5}),
        ("stch", {"ideal": "nadir"}),
        ("stch", {"log_losses": "yes"}),
        ("stch", {"preference": {"a": 0.0}}),
        ("dbmtl", {"sigma": -0.5}),
        ("dbmtl", {"eps": 0.0}),
    ],
)
def test_more_invalid_values(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=name):
        build(name, params)


@pytest.mark.parametrize(("name", "params"), [("famo", {"min_losses": {"z": 0.0}}),
                                              ("stch", {"preference": {"z": 1.0}})])
def test_per_task_options_for_unknown_tasks_are_rejected(name: str, params: dict) -> None:
    method = build(name, params)
    with pytest.raises(ValueError, match="unknown task"):
        method.setup(("a", "b"))


@pytest.mark.parametrize("name", ALL)
def test_unknown_task_at_decide_is_rejected(name: str) -> None:
    method = make(name)
    with pytest.raises(ValueError, match="unknown task"):
        decide(method, [1.0, 2.0], ("a", "zzz"))


STATEFUL_PARAMS: dict[str, dict[str, Any]] = {
    "rlw": {},
    "gls": {},
    "imtl_l": {},
    "famo": {"lr": 0.3},
    "stch": {"warmup_steps": 2, "ideal": "running_min", "log_losses": True},
    "dbmtl": {"sigma": 0.5},
}


def _state(method: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", ALL)
def test_absent_task_state_is_untouched(name: str) -> None:
    method = make(name, **STATEFUL_PARAMS[name])
    for values in ([1.0, 2.0, 3.0], [0.9, 1.7, 2.5], [0.8, 1.5, 2.4]):
        decide(method, values, ("a", "b", "c"), torch.diag(torch.tensor([1.0, 2.0, 3.0])).double())
    before = _state(method)
    decision, _ = decide(method, [0.5, 2.0], ("c", "a"))
    assert decision.weights.shape == (2,)
    assert decision.weights.dtype == torch.float64
    assert torch.isfinite(decision.weights).all()
    after = _state(method)
    b = method.task_names.index("b")
    for key, value in before.items():
        if value.dim() == 1 and value.shape[0] == 3:  # per-task state
            assert torch.equal(after[key][b], value[b]), key


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("values", [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1e-30, 1e-12, 0.5]])
def test_zero_and_tiny_losses_stay_finite(name: str, values: list[float]) -> None:
    method = make(name)
    for _ in range(3):  # several steps, so stateful methods update from these losses too
        gramian = torch.diag(torch.tensor([0.0, 1e-20, 1.0], dtype=torch.float64))
        decision, losses = decide(method, values, ("a", "b", "c"), gramian)
        assert torch.isfinite(decision.weights).all()
        if decision.objective is not None:
            assert torch.isfinite(decision.objective)
        assert torch.isfinite(grad_wrt_losses(decision, losses)).all()


@pytest.mark.parametrize("name", ALL)
def test_gradient_coefficients_are_the_reported_weights(name: str) -> None:
    # The weights are documented as d objective / d L_k: check it wherever an objective is set.
    method = make(name)
    for values in ([1.0, 2.0, 3.0], [0.6, 2.5, 1.2], [0.3, 0.2, 4.0]):
        g = torch.diag(torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64))
        decision, losses = decide(method, values, ("a", "b", "c"), g)
        assert torch.allclose(grad_wrt_losses(decision, losses), decision.weights, rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name: str) -> None:
    params = STATEFUL_PARAMS[name]
    method = make(name, **params)
    if name == "imtl_l":
        set_scales(method, [0.3, -0.2, 1.1])
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        values = (torch.rand(3, generator=gen) + 0.1).tolist()
        decide(method, values, ("a", "b", "c"), torch.diag(torch.rand(3, generator=gen)).double())
    state = method.state_dict()

    fresh = make(name, **params)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    g = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    torch.manual_seed(11)
    d1, _ = decide(method, [0.4, 0.7, 0.2], ("a", "b", "c"), g)
    torch.manual_seed(11)
    d2, _ = decide(fresh, [0.4, 0.7, 0.2], ("a", "b", "c"), g)
    assert torch.equal(d1.weights, d2.weights)
    if d1.objective is not None:
        assert d2.objective is not None and torch.equal(d1.objective, d2.objective)


def _training_losses(name: str, steps: int = 60) -> tuple[float, float]:
    torch.manual_seed(0)
    tasks = [manytask.Task.regression("r1"), manytask.Task.regression("r2"),
             manytask.Task.classification("c", 3)]
    x = torch.randn(128, 6)
    targets = {
        "r1": x[:, :1] * 2.0 - x[:, 1:2],
        "r2": 10.0 * torch.tanh(x[:, 2:3]),  # a larger loss scale
        "c": (x[:, 3] > 0).long() + (x[:, 4] > 0.5).long(),
    }
    model = manytask.HardSharing(tasks, in_features=6, hidden=(32,))
    method = make(name, [t.name for t in tasks])
    params = [*model.parameters(), *method.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    totals = []
    for _ in range(steps):
        outputs, feats = model(x, return_features=True)
        losses = manytask.task_losses(tasks, outputs, targets)
        totals.append(sum(float(v.detach()) for v in losses.values()))
        opt.zero_grad()
        manytask.backward(losses, method, features=feats,
                          shared_params=list(model.shared_parameters()))
        opt.step()
    return totals[0], totals[-1]


@pytest.mark.parametrize("name", ALL)
def test_training_through_backward_reduces_the_loss(name: str) -> None:
    first, last = _training_losses(name)
    assert last < 0.5 * first, (first, last)
