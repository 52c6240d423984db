"""Affinities on constructed problems whose answer is known, and against direct computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from manytask import HardSharing, Task, Trainer
from manytask.data import TensorBatches
from manytask.grouping import GradientCosine, LookaheadAffinity, cosine_from_log
from manytask.tasks import task_losses


def _model(tasks: list[Task], width: int = 8, seed: int = 0) -> HardSharing:
    torch.manual_seed(seed)
    return HardSharing(tasks, in_features=5, hidden=(width,))


def _copy_head(model: HardSharing, src: str, dst: str) -> None:
    model.heads[dst].load_state_dict(model.heads[src].state_dict())


def test_identical_tasks_have_cosine_one_and_the_largest_lookahead() -> None:
    tasks = [Task.regression("a"), Task.regression("b"), Task.regression("c")]
    model = _model(tasks)
    _copy_head(model, "a", "b")
    x = torch.randn(32, 5)
    y = torch.randn(32, 1)
    targets = {"a": y, "b": y.clone(), "c": torch.randn(32, 1)}
    look = LookaheadAffinity(model, tasks, lr=0.05)
    step = look(x, targets)
    assert look.cosine is not None
    cos = look.cosine.matrix().values
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-6)
    # a step on a moves b exactly as a step on b does, and helps b more than c's step does
    assert step["a"]["b"] == pytest.approx(step["b"]["b"], rel=1e-9)
    assert step["a"]["b"] > step["c"]["b"]


def test_opposite_gradients_give_cosine_minus_one_and_negative_lookahead() -> None:
    tasks = [Task.regression("up"), Task.regression("down")]
    model = _model(tasks)
    _copy_head(model, "up", "down")
    x = torch.randn(32, 5)
    with torch.no_grad():
        f = model(x)["up"]
    y = torch.randn(32, 1)
    # residuals f - y and f - (2f - y) = y - f: exactly opposite feature gradients
    targets = {"up": y, "down": 2 * f - y}
    look = LookaheadAffinity(model, tasks, lr=0.01)
    step = look(x, targets)
    assert look.cosine is not None
    assert look.cosine.matrix().values[0, 1] == pytest.approx(-1.0, abs=1e-6)
    assert step["up"]["down"] < 0 < step["up"]["up"]
    assert step["down"]["up"] < 0 < step["down"]["down"]


def test_unrelated_task_has_zero_affinity() -> None:
    # heads read disjoint halves of the trunk's units: their gradients touch disjoint rows
    tasks = [Task.regression("a"), Task.regression("c")]
    model = _model(tasks, width=8)
    with torch.no_grad():
        model.heads["a"][0].weight[:, 4:] = 0
        model.heads["c"][0].weight[:, :4] = 0
    x = torch.randn(64, 5)
    targets = {"a": torch.randn(64, 1), "c": torch.randn(64, 1)}
    look = LookaheadAffinity(model, tasks, lr=0.1)
    step = look(x, targets)
    assert look.cosine is not None
    assert abs(look.cosine.matrix().values[0, 1]) < 1e-6
    assert abs(step["a"]["c"]) < 1e-12 and abs(step["c"]["a"]) < 1e-12
    assert step["a"]["a"] > 0


def test_lookahead_equals_an_explicit_sgd_step_on_the_shared_part() -> None:
    tasks = [Task.classification("p", 3), Task.binary("q"), Task.regression("r")]
    model = _model(tasks, width=6, seed=3)
    x = torch.randn(20, 5)
    targets = {
        "p": torch.randint(0, 3, (20,)),
        "q": torch.randint(0, 2, (20,)).float(),
        "r": torch.randn(20, 1),
    }
    lr = 0.3
    step = LookaheadAffinity(model, tasks, lr=lr, precision=None)(x, targets)
    with torch.no_grad():
        before = {k: float(v) for k, v in task_losses(tasks, model(x), targets).items()}
    for src in ("p", "q", "r"):
        clone = copy.deepcopy(model)
        loss = task_losses(tasks, clone(x), targets)[src]
        shared = list(clone.shared_parameters())
        grads = torch.autograd.grad(loss, shared)
        with torch.no_grad():
            for p, g in zip(shared, grads, strict=True):
                p -= lr * g
        with torch.no_grad():
            after = {k: float(v) for k, v in task_losses(tasks, clone(x), targets).items()}
        for dst in ("p", "q", "r"):
            expected = 1 - after[dst] / before[dst]
            assert step[src][dst] == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_lookahead_leaves_parameters_and_grads_alone() -> None:
    tasks = [Task.regression("a"), Task.regression("b")]
    model = _model(tasks)
    state = copy.deepcopy(model.state_dict())
    look = LookaheadAffinity(model, tasks, lr=0.1)
    look(torch.randn(8, 5), {"a": torch.randn(8, 1), "b": torch.randn(8, 1)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(p.grad is None for p in model.parameters())


def test_pairs_missing_from_a_batch_are_not_averaged_in() -> None:
    tasks = [Task.regression("a"), Task.regression("b"), Task.regression("c")]
    model = _model(tasks)
    look = LookaheadAffinity(model, tasks, lr=0.1)
    x = torch.randn(8, 5)
    nan = torch.full((8, 1), float("nan"))
    look(x, {"a": torch.randn(8, 1), "b": torch.randn(8, 1), "c": nan})
    look(x, {"a": torch.randn(8, 1), "b": nan, "c": torch.randn(8, 1)})
    counts = look.pairs.count
    assert counts[0, 1] == 1 and counts[0, 2] == 1 and counts[1, 2] == 0
    assert np.isnan(look.matrix().values[1, 2])


def test_cosine_from_trainer_log_is_the_mean_of_the_logged_values(tmp_path) -> None:
    tasks = [Task.regression("a"), Task.regression("b"), Task.binary("c")]
    model = _model(tasks)
    x = torch.randn(96, 5)
    targets = {
        "a": torch.randn(96, 1),
        "b": torch.randn(96, 1),
        "c": torch.randint(0, 2, (96, 1)).float(),
    }
    data = TensorBatches(x, targets, 16, shuffle=True, seed=0)
    trainer = Trainer(
        model, tasks, "equal", run_dir=tmp_path, cosine_every=1, log_every=1, progress=False
    )
    trainer.fit(data, 2)
    matrix = cosine_from_log(tmp_path)
    import csv

    with open(tmp_path / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    expected = np.mean([float(r["cos/a/c"]) for r in rows])
    assert matrix.tasks == ("a", "b", "c")
    assert matrix.values[0, 2] == pytest.approx(expected, rel=1e-12)
    assert np.allclose(matrix.values, matrix.values.T)
    assert matrix.info["steps"] == len(rows)


def test_cosine_from_log_without_cosines_is_an_error(tmp_path) -> None:
    tasks = [Task.regression("a"), Task.regression("b")]
    data = TensorBatches(torch.randn(32, 5), {"a": torch.randn(32, 1), "b": torch.randn(32, 1)}, 16)
    Trainer(_model(tasks), tasks, "equal", run_dir=tmp_path, progress=False).fit(data, 1)
    with pytest.raises(ValueError, match="cosine_every"):
        cosine_from_log(tmp_path)
    with pytest.raises(FileNotFoundError, match="steps"):
        cosine_from_log(tmp_path / "nowhere")


def test_gradient_cosine_accumulates_the_mean() -> None:
    acc = GradientCosine(["a", "b"])
    acc.add(["a", "b"], torch.tensor([[1.0, 1.0], [1.0, 1.0]]))  # cosine 1
    acc.add(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # cosine 0
    assert acc.matrix().values[0, 1] == pytest.approx(0.5)


def test_bad_arguments_are_named() -> None:
    tasks = [Task.regression("a"), Task.regression("b")]
    with pytest.raises(ValueError, match="lr"):
        LookaheadAffinity(_model(tasks), tasks, lr=0.0)


def test_cosine_from_a_manytask_train_run_knows_its_mode(tmp_path) -> None:
    from manytask.config import TrainConfig
    from manytask.run import train_from_config

    cfg = TrainConfig(
        tasks=["left", "right", "larger"],
        train_size=128,
        hidden=[16],
        epochs=1,
        batch_size=32,
        mode="feature",
        cosine_every=1,
        log_every=1,
        run_dir=str(tmp_path),
        progress=False,
    )
    train_from_config(cfg)
    matrix = cosine_from_log(tmp_path)
    assert matrix.kind == "cosine_feature" and matrix.info["mode"] == "feature"
    assert matrix.tasks == ("left", "right", "larger")
    assert matrix.info["steps"] == 4


def test_lookahead_ignores_dropout_and_leaves_buffers_alone() -> None:
    # a step of 1e-9 changes the losses by ~1e-9: fresh dropout masks in the before/after
    # forwards would show up as changes of order 0.1
    from manytask import HardSharing, Task
    from manytask.grouping import LookaheadAffinity

    torch.manual_seed(0)
    tasks = [Task.regression("a"), Task.regression("b")]
    model = HardSharing(tasks, 8, hidden=(32,), dropout=0.3)
    x = torch.randn(64, 8)
    targets = {"a": x[:, :1], "b": -x[:, 1:2]}
    look = LookaheadAffinity(model, tasks, lr=1e-9)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for _ in range(3):
        z = look(x, targets)
        assert all(abs(v) < 1e-6 for row in z.values() for v in row.values()), z
    assert model.training
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
