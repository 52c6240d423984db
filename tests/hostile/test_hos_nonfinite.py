"""NaN or inf in inputs, in losses, and in the tensors given to a merge.

* A data container refuses non-finite inputs when built (``TensorBatches``), naming the row.
* Inputs that reach a model anyway give a non-finite loss: ``manytask.backward`` and the
  Trainer raise ``NonFiniteLossError`` naming the task and step, before anything is
  backpropagated, so no weight (and no optimizer state) changes; with ``skip_nonfinite`` the
  step is skipped and counted instead.
* A merge input holding NaN/inf raises ``NonFiniteTensorError`` naming tensor, model and row,
  and leaves no output.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_clear,
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    small_state,
    tree,
    write_model,
)

from manytask import backward
from manytask.balancers import make_balancer
from manytask.data import TensorBatches
from manytask.engine.backward import NonFiniteLossError
from manytask.merging import NonFiniteTensorError, merge, merge_state_dicts
from manytask.models import HardSharing
from manytask.tasks import Task, task_losses
from manytask.training import Trainer

TASKS = [Task.classification("a", 3), Task.regression("b")]
BAD_VALUES = [math.nan, math.inf, -math.inf]
IDS = ["nan", "inf", "-inf"]


def batch(bad: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g)
    if bad is not None:
        x[3, 2] = bad
    return x, {"a": torch.randint(0, 3, (8,), generator=g), "b": torch.randn(8, generator=g)}


def model() -> HardSharing:
    torch.manual_seed(0)
    return HardSharing(TASKS, 5, hidden=[8])


@pytest.mark.parametrize("bad", BAD_VALUES, ids=IDS)
def test_non_finite_input_refused_by_tensor_batches(bad: float) -> None:
    x, y = batch(bad)
    raises_clear(lambda: TensorBatches(x, y, 4), "NaN or inf", "row 3")
    raises_clear(lambda: TensorBatches({"img": x}, y, 4), "x['img']", "row 3")


def test_nan_targets_still_mean_missing_labels() -> None:
    # the input check must not touch targets, where NaN is the missing-label convention
    x, y = batch()
    y["b"][:4] = math.nan
    assert len(TensorBatches(x, y, 4)) == 2


@pytest.mark.parametrize("bad", BAD_VALUES, ids=IDS)
@pytest.mark.parametrize("method", ["equal", "mgda", "uncertainty"])
def test_non_finite_input_in_own_loop(bad: float, method: str) -> None:
    net = model()
    balancer = make_balancer(method)
    x, y = batch(bad)
    outputs, features = net(x, return_features=True)
    losses = task_losses(TASKS, outputs, y)
    with pytest.raises(NonFiniteLossError) as info:
        backward(losses, balancer, features=features, shared_params=net.shared_parameters(), step=7)
    assert_clear(info.value, "loss of task", "step 7", "no gradient was applied")
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("bad", BAD_VALUES, ids=IDS)
def test_non_finite_loss_given_directly(bad: float) -> None:
    w = torch.ones(3, requires_grad=True)
    losses = {"a": (w * 2).sum(), "b": (w * bad).sum()}
    with pytest.raises(NonFiniteLossError) as info:
        backward(losses, make_balancer("equal"))
    assert_clear(info.value, "'b'")
    assert w.grad is None


@pytest.mark.parametrize("method", ["equal", "pcgrad", "famo"])
def test_non_finite_input_stops_the_trainer_without_update(method: str) -> None:
    net = model()
    trainer = Trainer(net, TASKS, method, progress=False)
    trainer.train_step(batch())  # one good step, so the optimizer has state to protect
    weights = [p.detach().clone() for p in net.parameters()]
    moments = {
        k: v.clone()
        for k, v in trainer.optimizer.state_dict()["state"][0].items()
        if torch.is_tensor(v)
    }
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train_step(batch(math.nan))
    assert_clear(info.value, "step 1")
    assert all(torch.equal(a, p) for a, p in zip(weights, net.parameters(), strict=True))
    after = trainer.optimizer.state_dict()["state"][0]
    assert all(torch.equal(v, after[k]) for k, v in moments.items())
    assert trainer.step == 1


def test_skip_nonfinite_skips_and_counts() -> None:
    net = model()
    trainer = Trainer(net, TASKS, "mgda", progress=False, skip_nonfinite=True)
    weights = [p.detach().clone() for p in net.parameters()]
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert trainer.train_step(batch(math.inf)) is None
    assert trainer.skipped_steps == 1 and trainer.step == 0
    assert all(torch.equal(a, p) for a, p in zip(weights, net.parameters(), strict=True))


# ---------------------------------------------------------------------------- merging
@pytest.mark.parametrize("bad", BAD_VALUES, ids=IDS)
def test_non_finite_merge_input_leaves_no_output(tmp_path: Path, bad: float) -> None:
    base, models = family(tmp_path)
    state = small_state(5)
    state["layer.1.weight"][2, 4] = bad
    write_model(models[1], state)
    out = tmp_path / "out"
    raises_clear(
        lambda: merge(merge_config(base, models), out),
        "'layer.1.weight'",
        str(models[1]),
        "row 2",
        kinds=NonFiniteTensorError,
    )
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


def test_non_finite_merge_input_keeps_previous_result(tmp_path: Path) -> None:
    base, models = family(tmp_path)
    out = tmp_path / "out"
    merge(merge_config(base, models), out)
    before = tree(out)
    state = small_state(5)
    state["layer.0.bias"][0] = math.nan
    write_model(base, state)
    raises_clear(
        lambda: merge(merge_config(base, models), out), "'layer.0.bias'", kinds=NonFiniteTensorError
    )
    assert tree(out) == before


def test_non_finite_state_dict_merge() -> None:
    a, b = small_state(1), small_state(2)
    b["layer.0.weight"][1, 1] = math.inf
    raises_clear(
        lambda: merge_state_dicts("linear", [a, b]),
        "'layer.0.weight'",
        "models[1]",
        kinds=NonFiniteTensorError,
    )
