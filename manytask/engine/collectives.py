"""Process groups for the engine: a single process is a group of one.

Every rank sees a shard of the same global batch, and after :func:`manytask.backward` the
model's gradients are **averaged** over ranks (:func:`sync_gradients`, the reduction
DistributedDataParallel also performs). The engine reduces the per-task information the method
reads, so every rank takes the same decision:

* per-task losses: one all-reduce of a 3 x K float64 buffer (labelled-sample counts,
  count-weighted losses and the ranks where each task is labelled), :func:`global_losses`;
* feature-level Gramian: a sum over samples, one all-reduce of K x K values;
* exact Gramian: a sum over parameter blocks, so no rank needs the whole K x P Jacobian: a
  reduce-scatter of the per-task gradients w.r.t. the shared parameters gives each rank the
  global gradients of its slice of the parameters, each rank forms its slice's part of the
  Gramian and one all-reduce of K x K values completes it (:func:`sharded_gramian`); methods
  that need the Jacobian itself (Jacobian aggregators, flat regions) all-reduce the K x P
  values;
* Jacobian aggregators in feature mode: the per-task feature gradients are gathered
  (:func:`gather_columns`).

In a group of one (:func:`group_of` without ``torch.distributed``) every collective returns its
input unchanged, so one code path serves both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

SHARDED: tuple[type, ...]  # the types of parameters that FSDP2 (fully_shard) shards
try:
    from torch.distributed.tensor import DTensor

    SHARDED = (DTensor,)
except ImportError:  # torch < 2.4: no FSDP2
    SHARDED = ()


@dataclass(frozen=True)
class DistContext:
    """The process group this rank trains in (``group=None``: the default group)."""

    rank: int
    world_size: int
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext(rank=0, world_size=1)


def context(process_group: Any = None) -> DistContext | None:
    """The distributed context, or ``None`` when training runs in one process.

    ``None`` also when ``torch.distributed`` is initialised with a world of one process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError("process_group= was given but torch.distributed is not initialised")
        return None
    world = dist.get_world_size(process_group)
    if world == 1:
        return None
    return DistContext(dist.get_rank(process_group), world, process_group)


def group_of(process_group: Any = None) -> DistContext:
    """The group this rank trains in; :data:`SINGLE` (a group of one) in a single process."""
    ctx = context(process_group)
    return SINGLE if ctx is None else ctx


def init_from_env(backend: str | None = None) -> DistContext | None:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Does nothing (returns ``None``) when ``WORLD_SIZE`` is unset or 1. The backend defaults
    to ``nccl`` when CUDA is available and ``gloo`` otherwise.
    """
    world = os.environ.get("WORLD_SIZE")
    if world is None or int(world) <= 1:
        return None
    if not dist.is_initialized():
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=chosen)
    return context()


def is_main_process() -> bool:
    """True on rank 0, and in a single-process run."""
    ctx = context()
    return ctx is None or ctx.is_main


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None and ctx.world_size > 1:
        dist.barrier(group=ctx.group)


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if ctx.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=ctx.group)
    return tensor


def all_reduce_blocks(blocks: Sequence[Tensor], ctx: DistContext) -> list[Tensor]:
    """Sum a list of tensors over ranks with one collective (flattened into one buffer)."""
    if ctx.world_size == 1:
        return list(blocks)
    flat = torch.cat([b.reshape(-1) for b in blocks])
    all_reduce_sum(flat, ctx)
    pieces = flat.split([b.numel() for b in blocks])
    return [piece.view_as(b) for piece, b in zip(pieces, blocks, strict=True)]


def sharded_gramian(blocks: Sequence[Tensor], ctx: DistContext) -> Tensor:
    """``G = J J^T`` (float64) of ``J = sum_r J_r``, the per-task gradients ``J_r`` (K x P, as
    ``blocks`` of shape (K, ...)) summed over ranks, without any rank holding ``J``.

    The Gramian is a sum over parameter blocks, ``G = sum_s J_s J_s^T`` for any partition of
    the P columns into slices ``s``: one reduce-scatter gives rank r the summed columns of its
    slice (about P / R of them), it forms ``J_{s_r} J_{s_r}^T`` and one all-reduce of K x K
    values adds the slices' parts. Communication: K P values reduce-scattered and K^2
    all-reduced, against 2 K P for an all-reduce of ``J``.
    """
    k = blocks[0].shape[0]
    columns = torch.cat([b.reshape(k, -1) for b in blocks], dim=1)
    if ctx.world_size == 1:
        cols = columns.to(torch.float64)
        return cols @ cols.T
    width = -(-columns.shape[1] // ctx.world_size)  # each rank's slice, the last one padded
    rows = torch.zeros((width * ctx.world_size, k), dtype=columns.dtype, device=columns.device)
    rows[: columns.shape[1]] = columns.T  # reduce_scatter splits along the first dimension
    mine = torch.empty((width, k), dtype=columns.dtype, device=columns.device)
    dist.reduce_scatter_tensor(mine, rows, group=ctx.group)
    part = mine.to(torch.float64)
    return all_reduce_sum(part.T @ part, ctx)


def fsdp_managed(param: Tensor) -> bool:
    """A parameter sharded by FSDP2's ``fully_shard`` (a DTensor): FSDP reduce-scatters its
    gradient and averages it over ranks itself."""
    return isinstance(param, SHARDED)


def gather_columns(matrix: Tensor, ctx: DistContext) -> tuple[Tensor, int]:
    """Concatenate each rank's ``K x D_r`` matrix along the columns, in rank order.

    Returns the ``K x sum(D_r)`` matrix and the column where this rank's part starts. Ranks
    may hold different widths (uneven shards), so parts are padded to the widest.
    """
    if ctx.world_size == 1:
        return matrix, 0
    width = torch.tensor([matrix.shape[1]], dtype=torch.long, device=matrix.device)
    widths = [torch.zeros_like(width) for _ in range(ctx.world_size)]
    dist.all_gather(widths, width, group=ctx.group)
    sizes = [int(w) for w in widths]
    padded = torch.zeros((matrix.shape[0], max(sizes)), dtype=matrix.dtype, device=matrix.device)
    padded[:, : matrix.shape[1]] = matrix
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded.contiguous(), group=ctx.group)
    full = torch.cat([p[:, :s] for p, s in zip(parts, sizes, strict=True)], dim=1)
    return full, sum(sizes[: ctx.rank])


def sync_gradients(params: Iterable[Tensor], ctx: DistContext | None = None) -> None:
    """Average the ``.grad`` of ``params`` over ranks with one all-reduce.

    A parameter with no gradient on some rank (a head whose task is absent from that rank's
    shard) counts as zeros there, so every rank ends with the same gradients. Parameters
    sharded with FSDP's ``fully_shard`` are left out: FSDP has reduced their gradients
    already. Call it after :func:`manytask.backward` and before the optimizer step (the
    Trainer does). Nothing to do in a single process.
    """
    ctx = ctx if ctx is not None else context()
    if ctx is None or ctx.world_size == 1:
        return
    plist = [p for p in params if p.requires_grad and not fsdp_managed(p)]
    if not plist:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in plist]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, ctx)
    flat /= ctx.world_size
    for p, piece in zip(plist, flat.split([p.numel() for p in plist]), strict=True):
        # one buffer: float32 parameters among float64 ones are summed in float64 and cast back
        p.grad = piece.view_as(p).to(p.dtype, copy=True)


def global_losses(
    losses: Mapping[str, Tensor],
    counts: Mapping[str, float] | None,
    names: Sequence[str],
    ctx: DistContext,
) -> tuple[list[int], Tensor, Tensor]:
    """All-reduce ``(n_kr, n_kr * L_kr)`` over ranks ``r`` in one float64 buffer.

    Returns the indices (into ``names``) of the tasks labelled on some rank, their global
    losses ``L_k = sum_r n_kr L_kr / N_k`` (the labelled-sample-weighted mean, float64; NaN
    on every rank if any rank's loss is NaN) and this rank's share ``n_kr / N_k`` of each.
    Without ``counts`` every rank where a task is present counts once.
    """
    reduced = reduce_losses(losses, counts, names, ctx)
    return reduced.present, reduced.losses, reduced.share


@dataclass(frozen=True)
class GlobalLosses:
    """What :func:`reduce_losses` returns: see :func:`global_losses`; ``uniform`` is true
    when every task of ``present`` is labelled on every rank."""

    present: list[int]
    losses: Tensor
    share: Tensor
    uniform: bool


def reduce_losses(
    losses: Mapping[str, Tensor],
    counts: Mapping[str, float] | None,
    names: Sequence[str],
    ctx: DistContext,
) -> GlobalLosses:
    """:func:`global_losses`, plus whether every present task is labelled on every rank: one
    all-reduce of a 3 x K float64 buffer (counts, count-weighted losses, ranks labelled)."""
    buf = torch.zeros((3, len(names)), dtype=torch.float64)
    if losses:
        cols = torch.tensor([names.index(t) for t in losses], dtype=torch.long)
        n = torch.tensor(
            [1.0 if counts is None else float(counts[t]) for t in losses], dtype=torch.float64
        )
        if not bool((n > 0).all()):
            bad = list(losses)[int((~(n > 0)).nonzero()[0, 0])]
            raise ValueError(f"counts[{bad!r}] must be > 0 for a task with a loss")
        # one device-to-host copy for all tasks
        values = torch.stack([v.detach() for v in losses.values()]).double().cpu()
        buf[0, cols] = n
        buf[1, cols] = n * values
        buf[2, cols] = 1.0
    mine = buf[0].clone()
    all_reduce_sum(buf, ctx)
    present = (buf[0] > 0).nonzero().flatten().tolist()
    total = buf[0, present]
    uniform = bool((buf[2, present] == ctx.world_size).all())
    return GlobalLosses(present, buf[1, present] / total, mine[present] / total, uniform)
