"""Empty data sets and a batch with no labelled task.

An empty data set is refused by every container that builds batches, naming the container,
and a merge of checkpoints that hold no tensor is refused before any output exists. A batch
in which no task has a labelled sample is not an error for training (it happens with sparse
labels): ``task_losses`` returns nothing, the Trainer skips the step without touching a
weight, and ``manytask.backward({})`` says clearly that it got no loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hos_helpers import (
    assert_no_partial,
    family,
    merge_config,
    raises_clear,
    raw_safetensors,
)

from manytask import backward
from manytask.balancers import make_balancer
from manytask.data import (
    MultiDigits,
    MultiTaskBatches,
    RoundRobinSampler,
    TemperatureSampler,
    TensorBatches,
    collate_multitask,
)
from manytask.data.tabular import TabularDataset
from manytask.data.text import MixedTaskBatches, stacked_batches
from manytask.merging import merge, merge_state_dicts
from manytask.merging.sources import open_source
from manytask.models import HardSharing
from manytask.tasks import Task, task_losses
from manytask.training import Trainer

TASKS = [Task.classification("a", 3), Task.binary("b"), Task.regression("c")]
EMPTY_X = torch.zeros(0, 5)
EMPTY_Y = torch.zeros(0, dtype=torch.long)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: TensorBatches(EMPTY_X, {"a": EMPTY_Y}, 4), ("TensorBatches", "empty")),
        (lambda: MultiDigits(split="train", size=0), ("MultiDigits", "size")),
        (lambda: list(TabularDataset(None, EMPTY_X, {"c": torch.zeros(0)}).batches(4)), ("empty",)),
        (lambda: MixedTaskBatches({"a": EMPTY_X}, {"a": EMPTY_Y}, 4), ("'a'", "n >= 1")),
        (lambda: stacked_batches({"a": EMPTY_X}, {"a": EMPTY_Y}, 4), ("'a'", "n >= 1")),
        (lambda: TemperatureSampler({"a": 0, "b": 5}), ("'a'", "positive")),
        (lambda: TemperatureSampler({}), ("at least one task",)),
        (
            lambda: list(MultiTaskBatches({"a": []}, RoundRobinSampler(["a"]), steps=2)),
            ("'a'", "no batch"),
        ),
        (lambda: collate_multitask(TASKS)([]), ("empty batch",)),
    ],
    ids=[
        "TensorBatches",
        "MultiDigits",
        "TabularDataset",
        "MixedTaskBatches",
        "stacked_batches",
        "sampler size 0",
        "sampler no task",
        "MultiTaskBatches",
        "collate",
    ],
)
def test_empty_data_set_refused(build: object, words: tuple[str, ...]) -> None:
    raises_clear(build, *words)


def test_checkpoint_without_tensors_refused(tmp_path: Path) -> None:
    path = raw_safetensors(tmp_path / "empty.safetensors", {"__metadata__": {}}, b"")
    raises_clear(lambda: open_source(path), str(path), "no tensor")
    base, models = family(tmp_path)
    raw_safetensors(models[0] / "model.safetensors", {}, b"")
    out = tmp_path / "out"
    raises_clear(lambda: merge(merge_config(base, models), out), str(models[0]), "no tensor")
    assert not out.exists()
    assert_no_partial(tmp_path, "out")


def test_empty_model_list_refused(tmp_path: Path) -> None:
    base, _ = family(tmp_path, 0)
    raises_clear(lambda: merge(merge_config(base, []), tmp_path / "out"), "models")
    assert not (tmp_path / "out").exists()


def test_empty_state_dicts_refused() -> None:
    raises_clear(lambda: merge_state_dicts("linear", [{}, {}]), "no tensor")


# ---------------------------------------------------------------------------- no labelled task
def unlabelled_batch(n: int = 6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.randn(n, 5), {
        "a": torch.full((n,), -1),
        "b": torch.full((n,), math.nan),
        "c": torch.full((n,), math.nan),
    }


def test_no_labelled_task_gives_no_loss() -> None:
    torch.manual_seed(0)
    net = HardSharing(TASKS, 5, hidden=[8])
    x, y = unlabelled_batch()
    assert task_losses(TASKS, net(x), y) == {}
    assert task_losses(TASKS, net(x), {}) == {}


@pytest.mark.parametrize("method", ["equal", "mgda", "uncertainty", "graddrop"])
def test_backward_with_no_loss_is_a_clear_error(method: str) -> None:
    raises_clear(lambda: backward({}, make_balancer(method)), "no task loss")


@pytest.mark.parametrize("method", ["equal", "cagrad", "dwa"])
def test_trainer_skips_a_batch_with_no_labelled_task(method: str) -> None:
    torch.manual_seed(0)
    net = HardSharing(TASKS, 5, hidden=[8])
    trainer = Trainer(net, TASKS, method, progress=False)
    before = [p.detach().clone() for p in net.parameters()]
    assert trainer.train_step(unlabelled_batch()) is None
    assert trainer.train_step((torch.randn(4, 5), {})) is None
    assert trainer.step == 0
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    # and a whole epoch of such batches trains nothing, without an error
    trainer.fit([unlabelled_batch(), unlabelled_batch(3)], 1)
    assert trainer.step == 0
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_collate_of_samples_without_labels() -> None:
    x, y = collate_multitask(TASKS)([(torch.zeros(5), {}), (torch.zeros(5), {"a": None})])
    assert x.shape == (2, 5) and y == {}
    assert json.dumps(sorted(y)) == "[]"
