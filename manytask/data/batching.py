"""Multi-task batching: fast batches from in-memory tensors, and a collate function for loaders.

* :class:`TensorBatches` slices tensors held in memory (a whole data set as ``x`` and
  ``{task: target}``), one indexing operation per batch, with no per-sample Python work. The
  order of epoch ``e`` depends only on ``(seed, e)``, so training resumed at an epoch boundary
  sees the same batches as an uninterrupted run.
* :func:`collate_multitask` builds the ``collate_fn`` of a :class:`torch.utils.data.DataLoader`
  over any data set yielding ``(inputs, {task: target})`` in which samples may lack tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from ..tasks import Task

Inputs = Tensor | Mapping[str, Tensor]
Batch = tuple[Any, dict[str, Tensor]]


def _rows(value: Inputs) -> list[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        return [("x", value)]
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("TensorBatches: x is an empty mapping")
        bad = [k for k, v in value.items() if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"TensorBatches: x[{bad[0]!r}] is not a tensor")
        return [(f"x[{k!r}]", v) for k, v in value.items()]
    raise TypeError(
        f"TensorBatches: x must be a tensor or a mapping of tensors, got {type(value).__name__}"
    )


class TensorBatches:
    """Mini-batches ``(x_batch, {task: target_batch})`` sliced from in-memory tensors.

    Args:
        x: inputs, a tensor (N, ...) or a mapping of such tensors (then batches hold a dict).
        targets: ``{task: tensor (N, ...)}``; missing labels follow :mod:`manytask.tasks`.
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: draw a fresh permutation for each epoch (else the stored order).
        seed: with the epoch, the only input of the permutation.
        drop_last: leave out a last incomplete batch.

    As with :class:`torch.utils.data.DistributedSampler`, call :meth:`set_epoch` at the start of
    each epoch; iterating twice without it repeats the same order.
    """

    def __init__(
        self,
        x: Inputs,
        targets: Mapping[str, Tensor],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"TensorBatches: batch_size must be a positive integer, got {batch_size!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"TensorBatches: seed must be a non-negative integer, got {seed!r}")
        if not isinstance(targets, Mapping):
            raise TypeError(
                "TensorBatches: targets must be a mapping {task: tensor}, "
                f"got {type(targets).__name__}"
            )
        columns = _rows(x)
        for name, value in targets.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"TensorBatches: targets[{name!r}] is not a tensor")
            columns.append((f"targets[{name!r}]", value))
        n = columns[0][1].shape[0] if columns[0][1].dim() else 0
        for where, value in columns:
            if value.dim() == 0 or value.shape[0] != n:
                raise ValueError(
                    f"TensorBatches: {where} has shape {tuple(value.shape)}, expected {n} rows "
                    f"like {columns[0][0]}"
                )
        if n == 0:
            raise ValueError("TensorBatches: the data set is empty")
        for where, value in columns:
            # NaN marks a missing label in targets; in an input it would only surface later
            # as a NaN loss, far from its cause.
            if where.startswith("x") and value.is_floating_point():
                bad = ~torch.isfinite(value.reshape(n, -1)).all(dim=1)
                if bool(bad.any()):
                    row = int(bad.nonzero()[0, 0])
                    raise ValueError(
                        f"TensorBatches: {where} contains NaN or inf (first in row {row} of {n})"
                    )
        self.x = x
        self.targets = dict(targets)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.num_samples = int(n)

    @classmethod
    def from_dataset(cls, dataset: Any, batch_size: int, **kwargs: Any) -> TensorBatches:
        """Batches over a data set that holds its tensors as ``.x`` and ``.targets``."""
        if not (hasattr(dataset, "x") and hasattr(dataset, "targets")):
            raise TypeError(
                f"TensorBatches.from_dataset: {type(dataset).__name__} has no .x and .targets; "
                "use a DataLoader with collate_multitask for other data sets"
            )
        return cls(dataset.x, dataset.targets, batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (a function of ``seed`` and ``epoch`` only)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"TensorBatches: epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> Tensor:
        """The sample order of ``epoch`` (default: the current one), as an int64 tensor."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.num_samples)
        # numpy's seeding of a (seed, epoch) pair is stable across versions and platforms.
        rng = np.random.default_rng([self.seed, epoch])
        return torch.from_numpy(rng.permutation(self.num_samples))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = None
        if self.shuffle:  # moved once per epoch; the per-batch .to() below is then a no-op
            first = self.x if isinstance(self.x, Tensor) else next(iter(self.x.values()))
            order = self.order().to(first.device)
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            if order is None:
                yield self._take(slice(start, stop))
            else:
                yield self._take(order[start:stop])

    def _take(self, index: slice | Tensor) -> Batch:
        def pick(t: Tensor) -> Tensor:
            if isinstance(index, slice):
                return t[index]
            return t.index_select(0, index.to(t.device))

        x = (
            pick(self.x)
            if isinstance(self.x, Tensor)
            else {k: pick(v) for k, v in self.x.items()}
        )
        return x, {name: pick(t) for name, t in self.targets.items()}

    def to(self, device: torch.device | str) -> TensorBatches:
        """The same batches with every tensor moved to ``device`` (once, not per batch)."""
        x = (
            self.x.to(device)
            if isinstance(self.x, Tensor)
            else {k: v.to(device) for k, v in self.x.items()}
        )
        moved = TensorBatches(
            x,
            {k: v.to(device) for k, v in self.targets.items()},
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
        )
        moved.epoch = self.epoch
        return moved


# ---------------------------------------------------------------------------- DataLoader collate
def _class_index(task: Task, value: Any, where: str) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise ValueError(
                f"{where}: task {task.name!r} takes one integer class index, got a tensor of "
                f"shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(
            f"{where}: task {task.name!r} takes an integer class index, got {value!r}"
        )
    return int(value)


def _float_row(task: Task, value: Any, where: str) -> Tensor:
    try:
        row = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where}: task {task.name!r} target {value!r} is not numeric") from err
    if row.numel() != task.out_features:
        raise ValueError(
            f"{where}: task {task.name!r} expects {task.out_features} value(s), got {row.numel()}"
        )
    return row


def _where(i: int) -> str:
    return f"collate_multitask: sample {i}"


def collate_multitask(tasks: Sequence[Task]) -> Callable[[Sequence[Any]], Batch]:
    """A ``collate_fn`` for samples ``(inputs, {task: target})`` that may lack some tasks.

    Inputs are collated by :func:`torch.utils.data.default_collate`. For each task present in
    at least one sample, the batch holds a tensor over all samples in which an absent task (or
    a ``None`` target) becomes a missing label: -1 (int64) for classification, NaN (float32)
    for binary and regression. Labels already marked missing (a negative class index, NaN)
    pass through as such. Targets have shape (batch,), or (batch, dim) for a regression
    task with ``dim > 1``. A task absent from every sample is left out of the batch.
    """
    tasks = list(tasks)
    by_name = {t.name: t for t in tasks}
    if len(by_name) != len(tasks):
        names = [t.name for t in tasks]
        raise ValueError(f"collate_multitask: task names must be unique, got {names}")

    def collate(batch: Sequence[Any]) -> Batch:
        if len(batch) == 0:
            raise ValueError("collate_multitask: empty batch")
        inputs = []
        found: dict[str, dict[int, Any]] = {name: {} for name in by_name}
        for i, sample in enumerate(batch):
            if not isinstance(sample, tuple | list) or len(sample) != 2:
                raise TypeError(
                    f"collate_multitask: sample {i} of the batch must be a pair "
                    f"(inputs, {{task: target}}), got {type(sample).__name__}"
                )
            x, targets = sample
            if not isinstance(targets, Mapping):
                raise TypeError(
                    f"collate_multitask: sample {i}: targets must be a mapping {{task: target}}, "
                    f"got {type(targets).__name__}"
                )
            for name, value in targets.items():
                if name not in by_name:
                    raise ValueError(
                        f"collate_multitask: sample {i} has a target for unknown task {name!r}; "
                        f"tasks are {list(by_name)}"
                    )
                if value is not None:
                    found[name][i] = value
            inputs.append(x)
        out: dict[str, Tensor] = {}
        n = len(batch)
        for task in tasks:
            given = found[task.name]
            if not given:
                continue
            if task.kind == "classification":
                labels = torch.full((n,), -1, dtype=torch.int64)
                idx = torch.tensor(list(given), dtype=torch.int64)
                labels[idx] = torch.tensor(
                    [_class_index(task, v, _where(i)) for i, v in given.items()], dtype=torch.int64
                )
                too_big = labels >= task.out_features
                if bool(too_big.any()):
                    bad = int(too_big.nonzero()[0, 0])
                    raise ValueError(
                        f"collate_multitask: sample {bad}: class index {int(labels[bad])} out of "
                        f"range for task {task.name!r} ({task.out_features} classes)"
                    )
                out[task.name] = labels
            else:
                values = torch.full((n, task.out_features), float("nan"), dtype=torch.float32)
                values[torch.tensor(list(given), dtype=torch.int64)] = torch.stack(
                    [_float_row(task, v, _where(i)) for i, v in given.items()]
                )
                out[task.name] = values[:, 0] if task.out_features == 1 else values
        return default_collate(inputs), out

    return collate
