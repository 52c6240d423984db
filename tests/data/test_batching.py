"""TensorBatches and collate_multitask."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from manytask import Task
from manytask.data import MultiDigits, TensorBatches, collate_multitask


def _indexed(n: int, width: int = 3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows that carry their own index, so a batch tells which samples it holds."""
    ids = torch.arange(n)
    x = ids[:, None].float().repeat(1, width)
    return x, {"a": ids.clone(), "b": ids.float() * 0.5}


def _ids(batches: TensorBatches) -> list[list[int]]:
    return [xb[:, 0].long().tolist() for xb, _ in batches]


# ---------------------------------------------------------------------------- TensorBatches
@pytest.mark.parametrize(("n", "bs"), [(10, 3), (12, 4), (5, 8)])
def test_each_sample_exactly_once_per_epoch(n: int, bs: int) -> None:
    x, y = _indexed(n)
    batches = TensorBatches(x, y, bs, seed=1)
    assert len(batches) == math.ceil(n / bs)
    for epoch in range(3):
        batches.set_epoch(epoch)
        seen = [i for b in _ids(batches) for i in b]
        assert sorted(seen) == list(range(n))
        assert [len(b) for b in _ids(batches)] == [min(bs, n - k * bs) for k in range(len(batches))]


def test_targets_stay_aligned_with_their_inputs() -> None:
    x, y = _indexed(23)
    for xb, yb in TensorBatches(x, y, 5, seed=3):
        assert torch.equal(yb["a"], xb[:, 0].long())
        assert torch.equal(yb["b"], xb[:, 0] * 0.5)


def test_drop_last_leaves_out_the_incomplete_batch_only() -> None:
    x, y = _indexed(10)
    batches = TensorBatches(x, y, 3, drop_last=True, seed=2)
    ids = _ids(batches)
    assert len(batches) == 3 == len(ids) and all(len(b) == 3 for b in ids)
    flat = [i for b in ids for i in b]
    assert len(set(flat)) == 9


def test_order_depends_only_on_seed_and_epoch() -> None:
    x, y = _indexed(50)
    run = TensorBatches(x, y, 7, seed=11)
    history = []
    for epoch in range(4):
        run.set_epoch(epoch)
        history.append(_ids(run))
    # a fresh object resumed at epoch 3 sees what the uninterrupted run saw
    resumed = TensorBatches(x, y, 7, seed=11)
    resumed.set_epoch(3)
    assert _ids(resumed) == history[3]
    assert _ids(resumed) == _ids(resumed)  # iterating again repeats the epoch
    assert history[0] != history[1]  # epochs differ
    other = TensorBatches(x, y, 7, seed=12)
    other.set_epoch(3)
    assert _ids(other) != history[3]  # seeds differ
    # the documented definition: numpy's permutation seeded by (seed, epoch)
    expected = np.random.default_rng([11, 2]).permutation(50).tolist()
    assert [i for b in history[2] for i in b] == expected


def test_no_shuffle_keeps_the_stored_order() -> None:
    x, y = _indexed(10)
    batches = TensorBatches(x, y, 4, shuffle=False)
    assert _ids(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_mapping_inputs_are_batched_together() -> None:
    x, y = _indexed(9)
    inputs = {"num": x, "cat": torch.arange(9) * 10}
    for xb, yb in TensorBatches(inputs, y, 4, seed=0):
        assert set(xb) == {"num", "cat"}
        assert torch.equal(xb["cat"], yb["a"] * 10) and torch.equal(xb["num"][:, 0].long(), yb["a"])


def test_from_dataset_and_to() -> None:
    ds = MultiDigits("val", size=30, tasks=("left", "sum"))
    batches = TensorBatches.from_dataset(ds, 8, shuffle=False)
    xb, yb = next(iter(batches))
    assert torch.equal(xb, ds.x[:8]) and torch.equal(yb["sum"], ds.targets["sum"][:8])
    batches.set_epoch(2)
    moved = batches.to("cpu")
    assert moved.epoch == 2 and _ids(moved) == _ids(batches)
    with pytest.raises(TypeError, match=r"has no \.x and \.targets"):
        TensorBatches.from_dataset([1, 2, 3], 2)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.zeros(5, 2), {"a": torch.zeros(4)}, 2), ValueError, r"targets\['a'\] has shape"),
        ((torch.zeros(5, 2), {"a": torch.zeros(5)}, 0), ValueError, "batch_size must be"),
        ((torch.zeros(5, 2), {"a": [0, 1]}, 2), TypeError, r"targets\['a'\] is not a tensor"),
        (([[0.0]], {"a": torch.zeros(1)}, 1), TypeError, "x must be a tensor"),
        ((torch.zeros(0, 2), {}, 1), ValueError, "empty"),
        (({}, {"a": torch.zeros(2)}, 1), ValueError, "x is an empty mapping"),
        ((torch.zeros(3), [("a", torch.zeros(3))], 1), TypeError, "targets must be a mapping"),
    ],
)
def test_bad_batches_arguments(args, error, match) -> None:
    with pytest.raises(error, match=match):
        TensorBatches(*args)


def test_bad_epoch() -> None:
    x, y = _indexed(4)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        TensorBatches(x, y, 2).set_epoch(-1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        TensorBatches(x, y, 2, seed=-3)


# ---------------------------------------------------------------------------- collate_multitask
TASKS = [
    Task.classification("digit", 10),
    Task.binary("odd"),
    Task.regression("pos", dim=2),
    Task.regression("never"),
]


def test_missing_task_keys_become_missing_labels() -> None:
    collate = collate_multitask(TASKS)
    batch: list[tuple[torch.Tensor, dict[str, Any]]] = [
        (torch.ones(3), {"digit": 4, "odd": 0.0, "pos": [1.0, 2.0]}),
        (torch.zeros(3), {"odd": torch.tensor(1.0)}),
        (torch.full((3,), 2.0), {"digit": torch.tensor(7), "pos": None}),
    ]
    x, y = collate(batch)
    assert torch.equal(x, torch.stack([torch.ones(3), torch.zeros(3), torch.full((3,), 2.0)]))
    assert set(y) == {"digit", "odd", "pos"}  # "never" appears in no sample: left out
    assert y["digit"].dtype == torch.int64 and y["digit"].tolist() == [4, -1, 7]
    assert y["odd"].dtype == torch.float32 and y["odd"].shape == (3,)
    assert y["odd"][:2].tolist() == [0.0, 1.0] and math.isnan(float(y["odd"][2]))
    assert y["pos"].shape == (3, 2) and y["pos"][0].tolist() == [1.0, 2.0]
    assert torch.isnan(y["pos"][1:]).all()
    for task in TASKS[:3]:  # the tasks read the batch's missing labels as such
        assert task.labelled(y[task.name]).tolist() == [
            task.name in s[1] and s[1][task.name] is not None for s in batch
        ]


def test_loss_on_a_collated_batch_uses_only_the_labelled_samples() -> None:
    task = Task.classification("digit", 3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    _, y = collate_multitask([task])([(0, {"digit": 0}), (1, {}), (2, {"digit": 2})])
    # mean cross-entropy over samples 0 and 2, written out from its definition
    by_hand = -0.5 * (torch.log_softmax(logits[0], 0)[0] + torch.log_softmax(logits[2], 0)[2])
    loss = task.loss(logits, y["digit"])
    assert loss is not None and torch.allclose(loss, by_hand)


def test_already_missing_labels_pass_through() -> None:
    tasks = [Task.classification("c", 3), Task.binary("b")]
    _, y = collate_multitask(tasks)([(0, {"c": -1, "b": float("nan")}), (1, {"c": 2, "b": 1.0})])
    assert y["c"].tolist() == [-1, 2] and math.isnan(float(y["b"][0]))


def test_collate_in_a_dataloader_over_a_user_dataset() -> None:
    class Sparse(Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int):
            targets = {"digit": i} if i % 2 == 0 else {"odd": float(i % 2)}
            return {"pixels": torch.full((2,), float(i))}, targets

    loader = DataLoader(Sparse(), batch_size=3, collate_fn=collate_multitask(TASKS))
    batches = list(loader)
    assert len(batches) == 2
    x, y = batches[0]
    assert x["pixels"].shape == (3, 2)
    assert y["digit"].tolist() == [0, -1, 2]
    assert torch.isnan(y["odd"][[0, 2]]).all() and float(y["odd"][1]) == 1.0


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ([torch.zeros(2)], TypeError, "sample 0 of the batch must be a pair"),
        ([(0, {}), (0, {}, 1)], TypeError, "sample 1 of the batch must be a pair"),
        ([(0, [4])], TypeError, "sample 0: targets must be a mapping"),
        ([(0, {"colour": 1})], ValueError, "unknown task 'colour'"),
        ([(0, {"digit": 2.0})], ValueError, "sample 0: task 'digit' takes an integer"),
        ([(0, {}), (0, {"digit": 10})], ValueError, "sample 1: class index 10 out of range"),
        ([(0, {"pos": [1.0]})], ValueError, "task 'pos' expects 2 value"),
        ([(0, {"odd": "yes"})], ValueError, "task 'odd' target 'yes' is not numeric"),
        ([], ValueError, "empty batch"),
    ],
)
def test_malformed_samples_are_named(batch, error, match) -> None:
    with pytest.raises(error, match=match):
        collate_multitask(TASKS)(batch)


def test_duplicate_task_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        collate_multitask([Task.binary("a"), Task.binary("a")])


def test_loader_with_collate_and_tensor_batches_agree_on_multidigits() -> None:
    ds = MultiDigits("val", size=20, tasks=("left", "sum", "larger"), missing_rate=0.3)
    loader = DataLoader(ds, batch_size=6, collate_fn=collate_multitask(ds.tasks()))
    fast = TensorBatches.from_dataset(ds, 6, shuffle=False)
    assert len(loader) == len(fast) == 4
    for (xa, ya), (xb, yb) in zip(loader, fast, strict=True):
        assert torch.equal(xa, xb) and set(ya) == set(yb)
        for name in ya:
            torch.testing.assert_close(ya[name], yb[name], rtol=0, atol=0, equal_nan=True)
