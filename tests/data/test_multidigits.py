"""MultiDigits: build-time invariants checked against scikit-learn's own loader."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from manytask.data import MultiDigits, source_split
from manytask.data.multidigits import load_source

SMALL = 400  # pairs per split in most tests: the invariants do not depend on the size


@pytest.fixture(scope="module")
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def test_fast_loader_reads_the_same_data_as_load_digits(sklearn_digits) -> None:
    images, labels = load_source()
    np.testing.assert_array_equal(images, sklearn_digits[0])
    np.testing.assert_array_equal(labels, sklearn_digits[1])


# ---------------------------------------------------------------------------- splits
def test_source_split_is_a_stratified_partition() -> None:
    _, labels = load_source()
    parts = source_split(0)
    every = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(every), np.arange(labels.size))  # disjoint and complete
    for name, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        assert abs(parts[name].size / labels.size - share) < 0.01
        for digit in range(10):
            # per digit, each split holds its share up to rounding (one image)
            in_split = int((labels[parts[name]] == digit).sum())
            assert abs(in_split - share * int((labels == digit).sum())) <= 1


def test_source_split_depends_on_its_seed_only() -> None:
    a, b, c = source_split(0), source_split(0), source_split(1)
    for name in a:
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["test"], c["test"])


def test_no_test_image_is_used_in_training_whatever_the_pair_seeds() -> None:
    train = MultiDigits("train", size=3000, seed=1)
    val = MultiDigits("val", size=SMALL, seed=2)
    test = MultiDigits("test", size=SMALL, seed=3)
    used = {name: set(ds.source.flatten().tolist()) for name, ds in
            (("train", train), ("val", val), ("test", test))}
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"]
    assert not used["val"] & used["test"]
    pools = source_split(0)
    for name, indices in used.items():
        assert indices <= set(pools[name].tolist())


def test_splits_builds_the_three_splits_with_their_sizes() -> None:
    sets = MultiDigits.splits(sizes={"train": 300, "val": 50}, seed=4)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [300, 50, 1500]
    alone = MultiDigits("val", size=50, seed=4)
    assert torch.equal(sets["val"].x, alone.x)


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_tensors_different_seed_different() -> None:
    kw: dict[str, Any] = {
        "size": SMALL, "tasks": ("left", "right", "sum", "larger"), "missing_rate": 0.2,
        "augment": True,
    }
    a, b, c = MultiDigits(seed=5, **kw), MultiDigits(seed=5, **kw), MultiDigits(seed=6, **kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.source, b.source)
    for name in a.targets:
        torch.testing.assert_close(a.targets[name], b.targets[name], rtol=0, atol=0,
                                   equal_nan=True)
    assert not torch.equal(a.source, c.source)
    assert not torch.equal(a.x, c.x)


def test_splits_draw_different_pairs_with_the_same_seed() -> None:
    val, test = MultiDigits("val", size=SMALL), MultiDigits("test", size=SMALL)
    assert not torch.equal(val.x, test.x)


# ---------------------------------------------------------------------------- content
def test_each_half_is_its_source_image_and_labels_follow(sklearn_digits) -> None:
    images, labels = sklearn_digits
    ds = MultiDigits("train", size=SMALL, seed=3, tasks=("left", "right", "sum", "larger"))
    pix = ds.x.reshape(-1, 8, 16).double()
    src = ds.source.numpy()
    np.testing.assert_allclose(pix[:, :, :8].numpy(), images[src[:, 0]] / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(pix[:, :, 8:].numpy(), images[src[:, 1]] / 16.0, rtol=0, atol=1e-7)
    left, right = labels[src[:, 0]], labels[src[:, 1]]
    assert ds.targets["left"].tolist() == left.tolist()
    assert ds.targets["right"].tolist() == right.tolist()
    np.testing.assert_allclose(ds.targets["sum"].numpy(), (left + right) / 18.0, atol=1e-7)
    assert ds.targets["larger"].tolist() == [float(a > b) for a, b in zip(left, right, strict=True)]
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
    assert ds.x.dtype == torch.float32 and ds.x.shape == (SMALL, 128)


def test_pairs_cover_the_digits_roughly_uniformly() -> None:
    ds = MultiDigits("train")
    counts = torch.bincount(ds.digits.flatten(), minlength=10).double() / ds.digits.numel()
    assert float((counts - 0.1).abs().max()) < 0.02


def test_unflattened_inputs_hold_the_same_pixels() -> None:
    flat = MultiDigits("test", size=50, flatten=True)
    image = MultiDigits("test", size=50, flatten=False)
    assert image.x.shape == (50, 1, 8, 16) and image.input_shape == (1, 8, 16)
    assert torch.equal(image.x.reshape(50, 128), flat.x)


def test_augmentation_shifts_each_digit_by_at_most_one_pixel(sklearn_digits) -> None:
    images = sklearn_digits[0]
    plain = MultiDigits("train", size=200, seed=1)
    moved = MultiDigits("train", size=200, seed=1, augment=True)
    assert torch.equal(plain.source, moved.source)  # augmentation does not change the pairs
    assert not torch.equal(plain.x, moved.x)
    pix = moved.x.reshape(-1, 8, 16).numpy()
    padded = np.pad(images / 16.0, ((0, 0), (1, 1), (1, 1)))
    for half in (0, 1):
        src = moved.source[:, half].numpy()
        got = pix[:, :, 8 * half: 8 * half + 8]
        # every sample must equal one of the 9 one-pixel shifts of its own source image
        matches = np.zeros(src.size, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = padded[src, 1 - dy: 9 - dy, 1 - dx: 9 - dx]
                matches |= np.abs(shifted - got).reshape(src.size, -1).max(axis=1) < 1e-6
        assert matches.all()


# ---------------------------------------------------------------------------- missing labels
def test_missing_rate_masks_exactly_that_share_with_the_task_conventions() -> None:
    tasks = ("left", "right", "sum", "larger")
    clean = MultiDigits("train", size=1000, seed=2, tasks=tasks)
    holey = MultiDigits("train", size=1000, seed=2, tasks=tasks, missing_rate=0.25)
    assert torch.equal(clean.x, holey.x)
    masks = {}
    for task in holey.tasks():
        target = holey.targets[task.name]
        known = task.labelled(target)
        masks[task.name] = ~known
        assert int((~known).sum()) == 250
        assert torch.equal(target[known], clean.targets[task.name][known])
        if task.kind == "classification":
            assert target.dtype == torch.int64 and set(target[~known].tolist()) == {-1}
        else:
            assert torch.isnan(target[~known]).all()
    # masks are drawn independently per task, so they are not all the same
    assert not torch.equal(masks["left"], masks["right"])


def test_missing_rate_per_task_and_independence_from_the_other_tasks() -> None:
    both = MultiDigits("val", size=300, tasks=("left", "right"), missing_rate={"right": 0.5})
    alone = MultiDigits("val", size=300, tasks=("right",), missing_rate=0.5)
    assert int((both.targets["left"] < 0).sum()) == 0
    assert int((both.targets["right"] < 0).sum()) == 150
    assert torch.equal(both.targets["right"], alone.targets["right"])


def test_full_missing_rate_leaves_no_label() -> None:
    ds = MultiDigits("val", size=40, tasks=("left", "sum"), missing_rate=1.0)
    assert (ds.targets["left"] == -1).all() and torch.isnan(ds.targets["sum"]).all()


# ---------------------------------------------------------------------------- tasks and dataset API
def test_tasks_match_their_targets_and_give_losses() -> None:
    ds = MultiDigits("train", size=64, tasks=("left", "right", "sum", "larger"), missing_rate=0.1)
    kinds = {t.name: (t.kind, t.out_features) for t in ds.tasks()}
    assert kinds == {"left": ("classification", 10), "right": ("classification", 10),
                     "sum": ("regression", 1), "larger": ("binary", 1)}
    for task in ds.tasks():
        output = torch.zeros(64, task.out_features)
        task.check_target(output, ds.targets[task.name])
        loss = task.loss(output, ds.targets[task.name])
        assert loss is not None and torch.isfinite(loss)


def test_getitem_and_dataloader() -> None:
    ds = MultiDigits("test", size=10, tasks=("left", "larger"))
    x, y = ds[3]
    assert torch.equal(x, ds.x[3]) and set(y) == {"left", "larger"}
    assert int(y["left"]) == int(ds.digits[3, 0])
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(xb, ds.x[:4]) and torch.equal(yb["left"], ds.targets["left"][:4])


def test_building_the_default_training_split_is_fast() -> None:
    load_source()  # reading the csv is cached; time the construction itself
    start = time.perf_counter()
    MultiDigits("train", tasks=("left", "right", "sum", "larger"), missing_rate=0.1, augment=True)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "dev"}, ValueError, "split must be one of"),
        ({"size": 0}, ValueError, "size must be a positive integer"),
        ({"size": 2.5}, ValueError, "size must be a positive integer"),
        ({"tasks": ("left", "middle")}, ValueError, "unknown task 'middle'"),
        ({"tasks": ()}, ValueError, "non-empty and unique"),
        ({"tasks": ("left", "left")}, ValueError, "non-empty and unique"),
        ({"tasks": "left"}, TypeError, "sequence of names"),
        ({"missing_rate": 1.5}, ValueError, r"missing_rate\['left'\] must be a number in \[0, 1\]"),
        ({"missing_rate": {"sum": 0.1}}, ValueError, "task 'sum', not among tasks"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"split_seed": 1.5}, ValueError, "split_seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        MultiDigits(**{"size": 10, **kwargs})


def test_bad_split_fractions_and_sizes() -> None:
    with pytest.raises(ValueError, match="fractions"):
        source_split(0, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown split"):
        MultiDigits.splits(sizes={"dev": 5})
