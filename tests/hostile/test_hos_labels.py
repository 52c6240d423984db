"""Labels out of range: a class index at or past the number of classes, a binary target
outside [0, 1], an infinite regression target, a target of the wrong dtype or shape.

Checked on every path a label takes: the loss of one task, ``task_losses`` in a user's own
loop, ``collate_multitask`` for a DataLoader, a Trainer step and evaluation. Expected: a
``TargetError`` (a ``ValueError``) naming the task - never torch's "Target 7 is out of bounds"
from inside ``cross_entropy`` - and, for a training step, no weight changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hos_helpers import assert_clear, raises_clear, tree
from torch import Tensor

from manytask.data import collate_multitask
from manytask.models import HardSharing
from manytask.tasks import TargetError, Task, task_losses
from manytask.training import Trainer

TASKS = [Task.classification("digit", 4), Task.binary("flag"), Task.regression("size", 2)]
N = 6


def good_targets() -> dict[str, Tensor]:
    return {
        "digit": torch.tensor([0, 1, 2, 3, -1, 2]),
        "flag": torch.tensor([0.0, 1.0, math.nan, 1.0, 0.0, 0.5]),
        "size": torch.randn(N, 2),
    }


# name -> (task, bad target, words the error must contain)
BAD: dict[str, tuple[str, Tensor, tuple[str, ...]]] = {
    "class index = num classes": ("digit", torch.tensor([0, 1, 4, 0, 0, 0]), ("4", "4 classes")),
    "class index far too large": ("digit", torch.tensor([0, 2**40, 0, 0, 0, 0]), ("out of range",)),
    "class index as float": ("digit", torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 1.0]), ("integer",)),
    "class targets 2-D": ("digit", torch.zeros(N, 4, dtype=torch.long), ("shape",)),
    "binary target 2": ("flag", torch.tensor([0.0, 2.0, 1.0, 0.0, 1.0, 0.0]), ("[0, 1]",)),
    "binary target -1": ("flag", torch.tensor([0.0, -1.0, 1.0, 0.0, 1.0, 0.0]), ("[0, 1]",)),
    "binary target inf": ("flag", torch.tensor([0.0, math.inf, 1, 0, 1, 0]), ("inf",)),
    "binary target integer": ("flag", torch.tensor([0, 1, 1, 0, 1, 0]), ("floating point",)),
    "regression target inf": ("size", torch.full((N, 2), -math.inf), ("inf",)),
    "regression target too narrow": ("size", torch.zeros(N, 3), ("2 target value",)),
    "too few targets": ("digit", torch.tensor([0, 1, 2]), ("batch of 6",)),
}


def model() -> HardSharing:
    torch.manual_seed(0)
    return HardSharing(TASKS, 5, hidden=[8])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_label_in_task_losses(case: str) -> None:
    task, target, words = BAD[case]
    net = model()
    outputs = net(torch.randn(N, 5))
    targets = {**good_targets(), task: target}
    raises_clear(
        lambda: task_losses(TASKS, outputs, targets), repr(task), *words, kinds=TargetError
    )


@pytest.mark.parametrize(
    "case", ["class index = num classes", "binary target 2", "regression target inf"]
)
def test_bad_label_in_a_trainer_step_changes_no_weight(case: str) -> None:
    task, target, words = BAD[case]
    net = model()
    trainer = Trainer(net, TASKS, "mgda", progress=False)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(TargetError) as info:
        trainer.train_step((torch.randn(N, 5), {**good_targets(), task: target}))
    assert_clear(info.value, repr(task), *words)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert trainer.step == 0


def test_bad_label_in_evaluation() -> None:
    trainer = Trainer(model(), TASKS, "equal", progress=False)
    task, target, words = BAD["class index = num classes"]
    batches = [(torch.randn(N, 5), {**good_targets(), task: target})]
    raises_clear(lambda: trainer.evaluate(batches), repr(task), *words, kinds=TargetError)


@pytest.mark.parametrize(
    ("samples", "words"),
    [
        ([(torch.zeros(2), {"digit": 4})], ("class index 4", "'digit'")),
        ([(torch.zeros(2), {"digit": 1.5})], ("integer class index", "'digit'")),
        ([(torch.zeros(2), {"digit": True})], ("integer class index", "'digit'")),
        ([(torch.zeros(2), {"size": [1.0]})], ("'size'", "2 value")),
        ([(torch.zeros(2), {"size": "tall"})], ("'size'", "not numeric")),
        ([(torch.zeros(2), {"colour": 1})], ("unknown task 'colour'",)),
    ],
    ids=[
        "class = num classes",
        "class float",
        "class bool",
        "regression too short",
        "regression text",
        "unknown task",
    ],
)
def test_bad_label_in_collate(samples: list, words: tuple[str, ...]) -> None:
    collate = collate_multitask(TASKS)
    raises_clear(lambda: collate(samples), "sample 0", *words)


def test_bad_label_mid_run_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    good = [(torch.randn(N, 5), good_targets()) for _ in range(2)]
    task, target, _ = BAD["class index = num classes"]
    hostile = [good[0], (torch.randn(N, 5), {**good_targets(), task: target})]

    class Epochs:
        """Good batches in epoch 0, a hostile one in epoch 1."""

        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
            return iter(good if self.epoch == 0 else hostile)

    run = tmp_path / "run"
    with pytest.raises(TargetError):
        Trainer(model(), TASKS, "equal", run_dir=run, progress=False).fit(Epochs(), 3)
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0000", "latest"]
    assert (checkpoints / "latest").read_text() == "epoch-0000"
    saved = tree(checkpoints)
    # the intact checkpoint resumes (here on good data) and is not rewritten by the failure
    resumed = Trainer(model(), TASKS, "equal", run_dir=run, progress=False)
    resumed.fit(good, 1, resume=True)
    assert resumed.step == 2 and tree(checkpoints) == saved
