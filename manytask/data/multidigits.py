"""MultiDigits: two handwritten digits side by side, a small multi-task data set with no download.

Built from the 1,797 8x8 images that scikit-learn bundles (``sklearn.datasets.load_digits``,
the UCI "Optical Recognition of Handwritten Digits" test set). Construction:

1. the source images are split once, stratified by digit, into train/val/test (60/20/20 by
   default) with ``split_seed``; the split does not depend on ``seed``, so a test image never
   appears in any training set built from the same ``split_seed``;
2. within a split, ``size`` pairs of source images are drawn uniformly with replacement
   (``seed``), and each sample is the 8x16 image ``[left | right]`` with pixels in [0, 1].

Tasks (targets follow the conventions of :mod:`manytask.tasks`):

* ``left``, ``right`` (default): 10-class classification of each digit;
* ``sum``: regression of ``(left + right) / 18``, in [0, 1];
* ``larger``: binary, 1.0 when ``left > right``.

``missing_rate`` marks a fraction of each task's labels as missing (class index -1, or NaN),
independently per task, to exercise the missing-label paths.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..tasks import Task

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("left", "right", "sum", "larger")
DEFAULT_SIZES: dict[str, int] = {"train": 6000, "val": 1500, "test": 1500}
MISSING_CLASS = -1


@lru_cache(maxsize=1)
def load_source() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as ``(images, labels)``: float64 (1797, 8, 8) in [0, 16], int64 (1797,).

    Reads scikit-learn's bundled ``digits.csv.gz`` directly: the same data as ``load_digits``
    without importing ``sklearn.datasets`` (which takes seconds). Falls back to ``load_digits``
    if the file is not where scikit-learn normally keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.origin is not None:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if path is not None and os.path.exists(path):
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    else:  # pragma: no cover - unusual scikit-learn layouts
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images.astype(np.float64), bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_seed(label: str, value: object) -> None:
    # numpy seeds a generator from a sequence of non-negative integers only
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"MultiDigits: {label} must be a non-negative integer, got {value!r}")


def source_split(
    split_seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> dict[str, np.ndarray]:
    """Indices of the source images in each split, stratified by digit, each sorted.

    Each digit's images are shuffled with ``split_seed`` and cut at the cumulative
    ``fractions`` (rounded), so every split holds about the same share of every digit.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"MultiDigits: fractions must be three positive numbers summing to 1, got {fractions}"
        )
    _check_seed("split_seed", split_seed)
    _, labels = load_source()
    rng = np.random.default_rng([split_seed, 7])
    cuts = np.cumsum(fractions)[:2]
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in range(10):  # ten classes: a loop over classes, not samples
        members = rng.permutation(np.flatnonzero(labels == digit))
        bounds = np.round(cuts * members.size).astype(int)
        for name, chunk in zip(SPLITS, np.split(members, bounds), strict=True):
            parts[name].append(chunk)
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each (8, 8) image by up to one pixel in each direction (zero fill), vectorised."""
    n = images.shape[0]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(-1, 2, size=(2, n))
    grid = np.arange(8)
    rows = (1 - dy)[:, None, None] + grid[None, :, None]
    cols = (1 - dx)[:, None, None] + grid[None, None, :]
    shifted: np.ndarray = padded[np.arange(n)[:, None, None], rows, cols]
    return shifted


def digit_task(name: str) -> Task:
    """The :class:`~manytask.Task` of one MultiDigits task name."""
    if name in ("left", "right"):
        return Task.classification(name, 10)
    if name == "sum":
        return Task.regression(name)
    if name == "larger":
        return Task.binary(name)
    raise ValueError(f"MultiDigits: unknown task {name!r}; tasks are {list(TASKS)}")


class MultiDigits(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """One split of MultiDigits, held as tensors (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of pairs (default 6000 / 1500 / 1500).
        seed: seed of the pair draw, the missing-label masks and the augmentation.
        tasks: task names among ``left``, ``right``, ``sum``, ``larger``.
        missing_rate: fraction of samples whose label is marked missing, for every task (a
            number) or per task (a mapping; unnamed tasks keep all labels). Exactly
            ``round(rate * size)`` labels are masked per task, independently across tasks.
        flatten: inputs of shape (128,) if true, else (1, 8, 16) for convolutional trunks.
        augment: shift each digit by up to one pixel in each direction (drawn with ``seed``).
        split_seed: seed of the source-image split; keep it equal across the three splits.

    Attributes:
        x: float32 inputs, (size, 128) or (size, 1, 8, 16), pixels in [0, 1].
        targets: ``{task: tensor}``: int64 (size,) for classification, float32 (size,) else.
        source: int64 (size, 2), the indices of the left and right source images.
        digits: int64 (size, 2), the true left and right digits (never masked).
    """

    def __init__(
        self,
        split: Split = "train",
        *,
        size: int | None = None,
        seed: int = 0,
        tasks: Sequence[str] = ("left", "right"),
        missing_rate: float | Mapping[str, float] = 0.0,
        flatten: bool = True,
        augment: bool = False,
        split_seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"MultiDigits: split must be one of {list(SPLITS)}, got {split!r}")
        size = DEFAULT_SIZES[split] if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"MultiDigits: size must be a positive integer, got {size!r}")
        if isinstance(tasks, str):
            raise TypeError(
                f"MultiDigits: tasks must be a sequence of names, got the string {tasks!r}"
            )
        names = tuple(tasks)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"MultiDigits: tasks must be non-empty and unique, got {names}")
        for name in names:
            digit_task(name)  # raises on unknown names
        _check_seed("seed", seed)
        _check_seed("split_seed", split_seed)
        rates = self._rates(missing_rate, names)

        self.split: Split = split
        self.task_names = names
        self.seed = seed
        self.split_seed = split_seed
        self.flatten = flatten
        split_id = SPLITS.index(split)

        images, labels = load_source()
        pool = source_split(split_seed)[split]
        pair_rng = np.random.default_rng([seed, split_id, 0])
        source = pool[pair_rng.integers(0, pool.size, size=(size, 2))]
        left, right = images[source[:, 0]], images[source[:, 1]]
        if augment:
            aug_rng = np.random.default_rng([seed, split_id, 2])
            left, right = _shift(left, aug_rng), _shift(right, aug_rng)
        pixels = np.concatenate([left, right], axis=2) / 16.0  # (size, 8, 16)
        x = torch.from_numpy(pixels.astype(np.float32))
        self.x = x.reshape(size, 128) if flatten else x.reshape(size, 1, 8, 16)
        self.source = torch.from_numpy(source.astype(np.int64))
        self.digits = torch.from_numpy(labels[source].astype(np.int64))

        self.targets: dict[str, Tensor] = {}
        for name in names:
            target = self._clean_target(name)
            rate = rates.get(name, 0.0)
            if rate > 0:
                # One stream per task name, so a task's mask does not depend on the other tasks.
                mask_rng = np.random.default_rng([seed, split_id, 1, TASKS.index(name)])
                hidden = torch.from_numpy(mask_rng.permutation(size)[: round(rate * size)])
                target[hidden] = MISSING_CLASS if name in ("left", "right") else float("nan")
            self.targets[name] = target

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _rates(
        missing_rate: float | Mapping[str, float], names: tuple[str, ...]
    ) -> dict[str, float]:
        given = (
            dict(missing_rate)
            if isinstance(missing_rate, Mapping)
            else dict.fromkeys(names, missing_rate)
        )
        for name, rate in given.items():
            if name not in names:
                raise ValueError(
                    f"MultiDigits: missing_rate given for task {name!r}, not among tasks {names}"
                )
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ValueError(
                    f"MultiDigits: missing_rate[{name!r}] must be a number in [0, 1], got {rate!r}"
                )
        return {k: float(v) for k, v in given.items()}

    def _clean_target(self, name: str) -> Tensor:
        left, right = self.digits[:, 0], self.digits[:, 1]
        if name == "left":
            return left.clone()
        if name == "right":
            return right.clone()
        if name == "sum":
            return (left + right).to(torch.float32) / 18.0
        return (left > right).to(torch.float32)  # "larger"

    @classmethod
    def splits(
        cls,
        *,
        sizes: Mapping[str, int] | None = None,
        seed: int = 0,
        tasks: Sequence[str] = ("left", "right"),
        missing_rate: float | Mapping[str, float] = 0.0,
        flatten: bool = True,
        augment: bool = False,
        split_seed: int = 0,
    ) -> dict[str, MultiDigits]:
        """``{"train": ..., "val": ..., "test": ...}`` built with the same arguments.

        ``sizes`` maps split names to their number of pairs (others keep the default size).
        """
        sizes = dict(sizes or {})
        unknown = sorted(set(sizes) - set(SPLITS))
        if unknown:
            raise ValueError(f"MultiDigits.splits: unknown split(s) {unknown} in sizes")
        return {
            s: cls(s, size=sizes.get(s), seed=seed, tasks=tasks, missing_rate=missing_rate,
                   flatten=flatten, augment=augment, split_seed=split_seed)
            for s in SPLITS
        }

    # ------------------------------------------------------------------ the data set
    def tasks(self) -> list[Task]:
        """The :class:`~manytask.Task` objects of this data set's tasks, in order."""
        return [digit_task(name) for name in self.task_names]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[index], {name: t[index] for name, t in self.targets.items()}

    def __repr__(self) -> str:
        return (
            f"MultiDigits(split={self.split!r}, size={len(self)}, tasks={list(self.task_names)}, "
            f"input_shape={self.input_shape})"
        )
