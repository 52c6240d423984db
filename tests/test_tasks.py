from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from manytask import TargetError, Task, task_losses


def test_classification_ignores_negative_labels() -> None:
    task = Task.classification("c", 3)
    logits = torch.randn(4, 3)
    target = torch.tensor([0, -1, 2, -1])
    loss = task.loss(logits, target)
    assert loss is not None
    torch.testing.assert_close(loss, F.cross_entropy(logits[[0, 2]], target[[0, 2]]))


def test_regression_and_binary_ignore_nan() -> None:
    reg = Task.regression("r")
    out = torch.randn(3, 1)
    tgt = torch.tensor([[1.0], [math.nan], [2.0]])
    torch.testing.assert_close(reg.loss(out, tgt), F.mse_loss(out[[0, 2]], tgt[[0, 2]]))
    binary = Task.binary("b")
    tgt_b = torch.tensor([1.0, math.nan, 0.0])
    expected = F.binary_cross_entropy_with_logits(out[[0, 2]].reshape(-1), tgt_b[[0, 2]])
    torch.testing.assert_close(binary.loss(out, tgt_b), expected)


def test_all_missing_gives_none_and_task_losses_leaves_it_out() -> None:
    tasks = [Task.classification("a", 2), Task.regression("b")]
    outputs = {"a": torch.randn(2, 2), "b": torch.randn(2, 1)}
    losses = task_losses(tasks, outputs, {"a": torch.tensor([-1, -1]), "b": torch.zeros(2, 1)})
    assert list(losses) == ["b"]
    assert list(task_losses(tasks, outputs, {"b": torch.zeros(2, 1)})) == ["b"]


@pytest.mark.parametrize(
    ("task", "target", "match"),
    [
        (Task.classification("c", 3), torch.tensor([0, 3]), "out of range"),
        (Task.classification("c", 3), torch.tensor([0.0, 1.0]), "integer"),
        (Task.regression("r"), torch.tensor([[1.0]]), "batch of 2"),
        (Task.regression("r"), torch.tensor([1, 2]), "floating point"),
        (Task.binary("b"), torch.tensor([0.0, 2.0]), r"\[0, 1\]"),
        (Task.regression("r"), torch.tensor([[1.0], [math.inf]]), "inf"),
    ],
)
def test_bad_targets_name_the_task(task: Task, target: torch.Tensor, match: str) -> None:
    out = torch.randn(2, task.out_features)
    with pytest.raises(TargetError, match=match) as info:
        task.loss(out, target)
    assert repr(task.name) in str(info.value)


def test_unknown_task_in_targets_is_an_error() -> None:
    with pytest.raises(TargetError, match="unknown"):
        task_losses([Task.regression("r")], {"r": torch.zeros(1, 1)}, {"x": torch.zeros(1)})


def test_metric_directions() -> None:
    assert all(m.higher_is_better for m in Task.classification("c", 2).metrics)
    assert not any(m.higher_is_better for m in Task.regression("r").metrics)
    auc = Task.binary("b").metrics[0]
    assert auc.name == "auc"
    assert auc.fn(torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.0, 1.0, 0.0])) == 1.0
