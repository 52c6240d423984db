"""Text tasks, each its own data set, and mixed multi-task batches.

A :class:`TextTask` holds one task's sentences (or sentence pairs) and labels per split; the
files route (:mod:`manytask.data.declared`, e.g. ``configs/text.yaml`` for the eight bundled
tasks) builds them from declared files.

:class:`MixedTaskBatches` trains the tasks jointly: every batch concatenates sub-batches of
several tasks, each sub-batch's task drawn by a :mod:`manytask.data.sampling` sampler, and
marks the labels of the other tasks missing (-1), so that a gradient balancer sees several
tasks in one step. :func:`stacked_batches` lays out validation and test sets the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..tasks import Task
from .batching import TensorBatches
from .sampling import RoundRobinSampler, TaskSampler, TemperatureSampler

Text = str | tuple[str, str]


@dataclass(frozen=True)
class TextSplit:
    """Sentences (or sentence pairs) and their labels: int64 class indices, or the float
    targets of a binary, multi-label or regression task (one row per text)."""

    texts: tuple[Text, ...]
    labels: Tensor

    def __post_init__(self) -> None:
        if self.labels.dim() < 1 or self.labels.shape[0] != len(self.texts):
            raise ValueError(
                f"TextSplit: {len(self.texts)} texts but labels of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> TextSplit:
        return TextSplit(tuple(self.texts[i] for i in index), self.labels[torch.from_numpy(index)])


@dataclass(frozen=True)
class TextTask:
    """One text task: its splits and the names of its classes (``kind``: the task when it is
    not a plain classification over those classes, e.g. declared in a ``dataset:`` section)."""

    name: str
    label_names: tuple[str, ...]
    train: TextSplit
    val: TextSplit
    test: TextSplit
    kind: Task | None = None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def task(self) -> Task:
        if self.kind is not None:
            return self.kind
        return Task.classification(self.name, self.num_classes)

    def split(self, name: str) -> TextSplit:
        if name not in ("train", "val", "test"):
            raise ValueError(f"TextTask {self.name!r}: unknown split {name!r}")
        split: TextSplit = getattr(self, name)
        return split

    def capped(self, train: int | None, val: int | None, test: int | None,
               seed: int = 0) -> TextTask:
        """At most ``train``/``val``/``test`` examples per split (``None``: all).

        Each split keeps a fixed-seed random subset, in its original order, so that the same
        caps always select the same sentences (and hit the same embedding cache).
        """
        caps = {"train": train, "val": val, "test": test}
        out = {}
        for i, (name, cap) in enumerate(caps.items()):
            split = self.split(name)
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"TextTask.capped: cap of {name} must be a positive integer or "
                                 f"None, got {cap!r}")
            if cap is None or cap >= len(split):
                out[name] = split
                continue
            rng = np.random.default_rng([seed, i])
            out[name] = split.subset(np.sort(rng.choice(len(split), cap, replace=False)))
        return TextTask(self.name, self.label_names, out["train"], out["val"], out["test"],
                        self.kind)


# -------------------------------------------------------------------------------- batching
# A task's inputs: one tensor (n, ...), or a mapping of such tensors sharing the n rows (e.g.
# token-level hidden states and their attention mask); batches then hold a dict.
Features = Tensor | Mapping[str, Tensor]


def _columns(x: Features, owner: str, task: str) -> dict[str, Tensor]:
    """``{key: tensor}`` of one task's inputs (key ``""`` for a plain tensor)."""
    if isinstance(x, Tensor):
        return {"": x}
    if not isinstance(x, Mapping) or not x:
        raise TypeError(f"{owner}: features of task {task!r} must be a tensor or a non-empty "
                        f"mapping of tensors, got {type(x).__name__}")
    bad = [k for k, v in x.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"{owner}: features[{task!r}][{bad[0]!r}] is not a tensor")
    return dict(x)


def _rows(x: Features) -> int:
    return int(next(iter(_columns(x, "", "").values())).shape[0])


def _cat_rows(parts: Sequence[Features]) -> Features:
    """Rows of several tasks' inputs one after the other (per key for mappings)."""
    if isinstance(parts[0], Tensor):
        return torch.cat([p for p in parts if isinstance(p, Tensor)])
    return {k: torch.cat([_columns(p, "", "")[k] for p in parts]) for k in parts[0]}


def _take(x: Features, index: Tensor) -> Features:
    if isinstance(x, Tensor):
        return x.index_select(0, index)
    return {k: v.index_select(0, index) for k, v in x.items()}


def _check_features(features: Mapping[str, Features], labels: Mapping[str, Tensor],
                    owner: str) -> None:
    if not features:
        raise ValueError(f"{owner}: needs at least one task")
    if set(features) != set(labels):
        raise ValueError(f"{owner}: features for {sorted(features)} but labels for "
                         f"{sorted(labels)}")
    width: dict[str, torch.Size] | None = None
    for task, value in features.items():
        columns = _columns(value, owner, task)
        y = labels[task]
        for key, x in columns.items():
            where = f"features {tuple(x.shape)}" if not key else f"{key!r} {tuple(x.shape)}"
            if x.dim() < 2 or y.dim() < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"{owner}: task {task!r} has {where} and labels "
                                 f"{tuple(y.shape)}; expected (n, ...) and (n,) with n >= 1")
        shapes = {k: x.shape[1:] for k, x in columns.items()}
        if width is not None and shapes != width:
            raise ValueError(f"{owner}: task {task!r} has features of shape "
                             f"{_describe(shapes)} per example, others {_describe(width)}")
        width = shapes


def missing_labels(labels: Tensor, rows: int) -> Tensor:
    """``rows`` missing labels shaped and typed like ``labels``: -1 for integer class indices,
    NaN for float labels (binary, multi-label, regression), which keep their dtype."""
    shape = (rows, *labels.shape[1:])
    if labels.is_floating_point():
        return torch.full(shape, float("nan"), dtype=labels.dtype)
    return torch.full(shape, -1, dtype=labels.dtype)


def _describe(shapes: Mapping[str, torch.Size]) -> str:
    if set(shapes) == {""}:
        return str(tuple(shapes[""]))
    return str({k: tuple(v) for k, v in shapes.items()})


def stacked_batches(features: Mapping[str, Features], labels: Mapping[str, Tensor],
                    batch_size: int) -> TensorBatches:
    """Every task's examples one after the other, each labelled for its own task only (-1 for
    the others), in fixed order: the layout of validation and test sets."""
    _check_features(features, labels, "stacked_batches")
    tasks = list(features)
    x = _cat_rows([features[t] for t in tasks])
    sizes = [_rows(features[t]) for t in tasks]
    total = sum(sizes)
    targets = {}
    start = 0
    for task, n in zip(tasks, sizes, strict=True):
        column = missing_labels(labels[task], total)
        column[start:start + n] = labels[task]
        targets[task] = column
        start += n
    return TensorBatches(x, targets, batch_size, shuffle=False)


class MixedTaskBatches:
    """Batches ``(x, {task: labels})`` mixing sub-batches of tasks that have their own data.

    Each task's inputs are a tensor (n, ...) or a mapping of tensors with n rows each (the
    same keys and per-example shapes for every task); ``x`` is then a tensor or a dict.

    Each batch is ``tasks_per_batch`` sub-batches of ``batch_size // tasks_per_batch`` examples;
    the task of each sub-batch is drawn by the sampler (``"temperature"``:
    ``p_k`` proportional to ``n_k^(1/T)``, :class:`~manytask.data.sampling.TemperatureSampler`;
    ``"round_robin"``: the tasks in turn). A task's sub-batches walk through a random
    permutation of its examples, drawing a fresh one when it runs out. Every batch holds a label
    column for every task: the class index on that task's rows, -1 (missing) elsewhere. With
    ``tasks_per_batch=1`` each batch is one task's (one task per step).

    An epoch is ``steps`` batches (default: as many as one pass over all examples needs). The
    batches of epoch ``e`` depend only on ``(seed, e)``: call :meth:`set_epoch` (the Trainer
    does) and a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, features: Mapping[str, Features], labels: Mapping[str, Tensor],
                 batch_size: int, *, tasks_per_batch: int | None = None,
                 sampler: Literal["temperature", "round_robin"] = "temperature",
                 temperature: float = 2.0, steps: int | None = None, seed: int = 0) -> None:
        owner = "MixedTaskBatches"
        _check_features(features, labels, owner)
        self.tasks = tuple(features)
        if tasks_per_batch is None:
            tasks_per_batch = min(len(self.tasks), 4)
        for key, value in (("batch_size", batch_size), ("tasks_per_batch", tasks_per_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {key} must be a positive integer, got {value!r}")
        if batch_size < tasks_per_batch:
            raise ValueError(f"{owner}: batch_size {batch_size} is smaller than "
                             f"tasks_per_batch {tasks_per_batch}")
        if sampler not in ("temperature", "round_robin"):
            raise ValueError(f"{owner}: sampler must be 'temperature' or 'round_robin', "
                             f"got {sampler!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{owner}: seed must be a non-negative integer, got {seed!r}")
        self.features = dict(features)
        self.labels = dict(labels)
        self.sizes = {t: _rows(x) for t, x in self.features.items()}
        self.batch_size = batch_size
        self.tasks_per_batch = tasks_per_batch
        self.sub_batch = batch_size // tasks_per_batch
        self.sampler_kind = sampler
        self.temperature = temperature
        total = sum(self.sizes.values())
        self.steps = steps if steps is not None else math.ceil(total / batch_size)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"{owner}: steps must be a positive integer, got {steps!r}")
        self.seed = seed
        self.epoch = 0
        self.make_sampler(0)  # validates the temperature now rather than at the first epoch

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"MixedTaskBatches: epoch must be a non-negative integer, "
                             f"got {epoch!r}")
        self.epoch = epoch

    def make_sampler(self, epoch: int) -> TaskSampler:
        """The sampler of ``epoch``, seeded from ``(seed, epoch)``."""
        if self.sampler_kind == "round_robin":
            return RoundRobinSampler(self.tasks)
        seed = int(np.random.default_rng([self.seed, epoch]).integers(2**62))
        return TemperatureSampler(self.sizes, self.temperature, seed=seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Tensor]]]:
        sampler = self.make_sampler(self.epoch)
        rngs = {t: np.random.default_rng([self.seed, self.epoch, k])
                for k, t in enumerate(self.tasks)}
        orders = {t: torch.from_numpy(rngs[t].permutation(self.sizes[t])) for t in self.tasks}
        cursor = dict.fromkeys(self.tasks, 0)
        for _ in range(self.steps):
            chosen = [sampler.sample() for _ in range(self.tasks_per_batch)]
            parts, owners = [], []
            for task in chosen:
                if cursor[task] + self.sub_batch > self.sizes[task]:
                    # the task is used up: a fresh permutation (tiny tasks may repeat examples)
                    orders[task] = torch.from_numpy(rngs[task].permutation(self.sizes[task]))
                    cursor[task] = 0
                idx = orders[task][cursor[task]:cursor[task] + self.sub_batch]
                cursor[task] += self.sub_batch
                parts.append(idx)
                owners.append(task)
            x = _cat_rows([_take(self.features[t], i) for t, i in zip(owners, parts,
                                                                       strict=True)])
            rows = sum(int(i.shape[0]) for i in parts)
            targets = {t: missing_labels(self.labels[t], rows) for t in self.tasks}
            start = 0
            for task, idx in zip(owners, parts, strict=True):
                targets[task][start:start + idx.shape[0]] = self.labels[task].index_select(0, idx)
                start += idx.shape[0]
            yield x, targets
