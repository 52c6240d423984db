"""Training on several processes with ``torch.distributed`` (``torchrun``).

Convention: every rank sees a *shard* of the same global batch (:class:`ShardedBatches`), and
after :func:`manytask.backward` the model's gradients are **averaged** over ranks
(:func:`sync_gradients`, the reduction DistributedDataParallel also performs). How the engine
reduces the per-task information so that every rank takes the same decision is described in
:mod:`manytask.engine.collectives`, which holds the process-group helpers re-exported here.
A two-process run equals a one-process run on the same global batches up to rounding (checked
to 1e-6 in ``tests/distributed``).

Use :func:`sync_gradients` rather than DistributedDataParallel with gradient-level methods:
DDP with ``find_unused_parameters=True`` (needed when a shard lacks a task) returns copies of
the forward's outputs, so the features handed to ``backward`` are not those the heads read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..engine.collectives import (
    DistContext,
    all_reduce_sum,
    barrier,
    context,
    global_losses,
    init_from_env,
    is_main_process,
    sync_gradients,
)

Batch = tuple[Any, Any]

__all__ = [
    "DistContext",
    "ShardedBatches",
    "all_reduce_sum",
    "barrier",
    "context",
    "global_losses",
    "init_from_env",
    "is_main_process",
    "sync_gradients",
]


class ShardedBatches:
    """This rank's share of each global batch of ``batches``.

    Every rank iterates the same global batches (same order, same ``set_epoch``) and keeps a
    contiguous slice of each: rank ``r`` of ``R`` takes part ``r`` of
    ``torch.tensor_split(batch, R)``. So ``R`` processes together see exactly the batches one
    process would, whatever ``R`` is, and a run can resume on a different number of processes.
    A global batch smaller than ``R`` leaves some ranks with an empty shard; they still take
    part in the collectives.
    """

    def __init__(self, batches: Iterable[Batch], rank: int, world_size: int) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(
                f"ShardedBatches: world_size must be a positive integer, got {world_size!r}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"ShardedBatches: rank must be in [0, {world_size}), got {rank!r}")
        self.batches = batches
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.batches, "set_epoch", None) or getattr(
            getattr(self.batches, "sampler", None), "set_epoch", None
        )
        if callable(set_epoch):
            set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        for x, targets in self.batches:
            yield self._shard(x), {k: self._shard(v) for k, v in targets.items()}

    def _shard(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            return torch.tensor_split(value, self.world_size)[self.rank]
        if isinstance(value, dict):
            return {k: self._shard(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._shard(v) for v in value)
        raise TypeError(
            f"ShardedBatches: cannot split a batch element of type {type(value).__name__}"
        )
