"""A model whose heads do not match the tasks: a head missing, a head for no task, a head of
the wrong width.

Names are checked when the Trainer is built (``ValueError`` listing both sides); widths are
checked on the first batch, before the loss is computed, with an ``OutputError`` naming the
task and both shapes - never torch's "Target 7 is out of bounds" or a broadcasting warning
from inside the loss. No weight changes.
"""

from __future__ import annotations

import pytest
import torch
from hos_helpers import assert_clear, raises_clear
from torch import nn

from manytask.models import HardSharing, MultiTaskModel
from manytask.tasks import OutputError, Task, task_losses
from manytask.training import Trainer

TASKS = [Task.classification("digit", 10), Task.binary("flag"), Task.regression("size", 2)]


def model_with(heads: dict[str, int]) -> MultiTaskModel:
    """A shared layer (5 -> 8) and one linear head of the given width per name."""
    torch.manual_seed(0)
    return MultiTaskModel(nn.Linear(5, 8), {n: nn.Linear(8, w) for n, w in heads.items()})


def targets(n: int = 4) -> dict[str, torch.Tensor]:
    return {
        "digit": torch.tensor([7, 1, 9, 0])[:n],
        "flag": torch.tensor([0.0, 1.0, 1.0, 0.0])[:n],
        "size": torch.randn(n, 2),
    }


@pytest.mark.parametrize(
    ("heads", "words"),
    [
        ({"digit": 10, "flag": 1}, ("no head for ['size']",)),
        ({"digit": 10, "flag": 1, "size": 2, "colour": 3}, ("['colour'] have no task",)),
        ({"Digit": 10, "flag": 1, "size": 2}, ("no head for ['digit']", "['Digit']")),
    ],
    ids=["missing head", "extra head", "misspelt head"],
)
def test_head_names_checked_when_the_trainer_is_built(
    heads: dict[str, int], words: tuple[str, ...]
) -> None:
    raises_clear(
        lambda: Trainer(model_with(heads), TASKS, "equal", progress=False), *words, kinds=ValueError
    )


WIDTHS = {
    "classification head too narrow": ({"digit": 5, "flag": 1, "size": 2}, "'digit'", "(4, 5)"),
    "classification head too wide": ({"digit": 11, "flag": 1, "size": 2}, "'digit'", "(4, 11)"),
    "binary head of width 2": ({"digit": 10, "flag": 2, "size": 2}, "'flag'", "(4, 2)"),
    "regression head too narrow": ({"digit": 10, "flag": 1, "size": 1}, "'size'", "(4, 1)"),
    "regression head too wide": ({"digit": 10, "flag": 1, "size": 4}, "'size'", "(4, 4)"),
}


@pytest.mark.parametrize("case", list(WIDTHS))
def test_head_width_checked_in_own_loop(case: str) -> None:
    heads, task, shape = WIDTHS[case]
    net = model_with(heads)
    outputs = net(torch.randn(4, 5))
    raises_clear(
        lambda: task_losses(TASKS, outputs, targets()), task, shape, "head", kinds=OutputError
    )


@pytest.mark.parametrize("case", ["classification head too narrow", "regression head too wide"])
@pytest.mark.parametrize("method", ["equal", "mgda"])
def test_head_width_checked_by_the_trainer(case: str, method: str) -> None:
    heads, task, shape = WIDTHS[case]
    net = model_with(heads)
    trainer = Trainer(net, TASKS, method, progress=False)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(OutputError) as info:
        trainer.train_step((torch.randn(4, 5), targets()))
    assert_clear(info.value, task, shape)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_head_width_checked_in_evaluation() -> None:
    heads, task, shape = WIDTHS["binary head of width 2"]
    trainer = Trainer(model_with(heads), TASKS, "equal", progress=False)
    raises_clear(
        lambda: trainer.evaluate([(torch.randn(4, 5), targets())]), task, shape, kinds=OutputError
    )


def test_output_missing_for_a_task_with_targets() -> None:
    net = model_with({"digit": 10, "flag": 1})
    outputs = net(torch.randn(4, 5))
    raises_clear(lambda: task_losses(TASKS, outputs, targets()), "no output for task 'size'")


def test_matching_heads_still_accepted() -> None:
    # the width check must accept every layout the tasks document
    net = HardSharing(TASKS, 5, hidden=[8])
    losses = task_losses(TASKS, net(torch.randn(4, 5)), targets())
    assert sorted(losses) == ["digit", "flag", "size"]
    one = Task.regression("r")
    assert one.loss(torch.randn(4), torch.randn(4)) is not None  # (batch,) for one value
    assert Task.binary("f").loss(torch.randn(4, 1), torch.ones(4)) is not None
