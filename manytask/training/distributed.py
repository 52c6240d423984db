"""Training on several processes with ``torch.distributed`` (``torchrun``).

Convention: every rank sees a *shard* of the same global batch (:class:`ShardedBatches`), and
after :func:`manytask.backward` the model's gradients are **averaged** over ranks
(:func:`sync_gradients`, the reduction DistributedDataParallel also performs). ``backward``
scales what each rank backpropagates by the world size ``R`` so that this average is the
gradient one process would compute on the whole global batch, and it reduces the per-task
information the balancer reads so every rank takes the same decision:

* per-task losses: one all-reduce of a 2 x K float64 buffer (labelled-sample counts and
  count-weighted losses); the global loss of task ``k`` is the labelled-sample-weighted mean;
* feature-level Gramian: a sum over samples, so one all-reduce of K x K values;
* exact Gramian: the per-task gradients w.r.t. the shared parameters are summed over ranks
  (one all-reduce of K x P values) before the Gramian is formed;
* Jacobian-level methods in feature mode: the per-task feature gradients are gathered
  (K x B x d values in all) so the method sees the Jacobian of the global batch.

Then one all-reduce of the P model gradients, as in plain data-parallel training. Every rank
then holds the same coefficients (each computes them from the same reduced numbers), so a
two-process run equals a one-process run on the same global batches up to rounding (checked
to 1e-6 in ``tests/distributed``).

Use :func:`sync_gradients` rather than DistributedDataParallel with gradient-level methods:
DDP with ``find_unused_parameters=True`` (needed when a shard lacks a task) returns copies of
the forward's outputs, so the features handed to ``backward`` are not those the heads read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..backward import (
    BackwardResult,
    HeadGrad,
    NonFiniteLossError,
    _apply_update,
    _check_weights,
    _result,
    gradient_inputs,
)
from ..balancers.base import Balancer
from ..balancers.blas import one_blas_thread
from ..gradients import Features, Mode, gramian_of, task_gradients

Batch = tuple[Any, Any]


@dataclass(frozen=True)
class DistContext:
    """The process group this rank trains in (``group=None``: the default group)."""

    rank: int
    world_size: int
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context(process_group: Any = None) -> DistContext | None:
    """The distributed context, or ``None`` when training runs in one process.

    ``None`` also when ``torch.distributed`` is initialised with a world of one process, so a
    single-process run follows exactly the single-process code path.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise ValueError("process_group= was given but torch.distributed is not initialised")
        return None
    world = dist.get_world_size(process_group)
    if world == 1:
        return None
    return DistContext(dist.get_rank(process_group), world, process_group)


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
    if ctx is not None:
        dist.barrier(group=ctx.group)


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=ctx.group)
    return tensor


def all_reduce_blocks(blocks: Sequence[Tensor], ctx: DistContext) -> list[Tensor]:
    """Sum a list of tensors over ranks with one collective (flattened into one buffer)."""
    flat = torch.cat([b.reshape(-1) for b in blocks])
    all_reduce_sum(flat, ctx)
    pieces = flat.split([b.numel() for b in blocks])
    return [piece.view_as(b) for piece, b in zip(pieces, blocks, strict=True)]


def gather_columns(matrix: Tensor, ctx: DistContext) -> tuple[Tensor, int]:
    """Concatenate each rank's ``K x D_r`` matrix along the columns, in rank order.

    Returns the ``K x sum(D_r)`` matrix and the column where this rank's part starts. Ranks
    may hold different widths (uneven shards), so parts are padded to the widest.
    """
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
    shard) counts as zeros there, so every rank ends with the same gradients. Call it after
    :func:`manytask.backward` and before the optimizer step (the Trainer does).
    """
    ctx = ctx if ctx is not None else context()
    if ctx is None:
        return
    plist = [p for p in params if p.requires_grad]
    if not plist:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in plist]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, ctx)
    flat /= ctx.world_size
    for p, piece in zip(plist, flat.split([p.numel() for p in plist]), strict=True):
        p.grad = piece.view_as(p).clone()


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


# ---------------------------------------------------------------------------- backward
def global_losses(
    losses: Mapping[str, Tensor],
    counts: Mapping[str, float] | None,
    names: Sequence[str],
    ctx: DistContext,
) -> tuple[list[int], Tensor, Tensor]:
    """All-reduce ``(n_kr, n_kr * L_kr)`` over ranks ``r`` in one 2 x K float64 buffer.

    Returns the indices (into ``names``) of the tasks labelled on some rank, their global
    losses ``L_k = sum_r n_kr L_kr / N_k`` (the labelled-sample-weighted mean, float64; NaN
    on every rank if any rank's loss is NaN) and this rank's share ``n_kr / N_k`` of each.
    Without ``counts`` every rank where a task is present counts once.
    """
    buf = torch.zeros((2, len(names)), dtype=torch.float64)
    for task, value in losses.items():
        n = 1.0 if counts is None else float(counts[task])
        if not n > 0:
            raise ValueError(f"counts[{task!r}] must be > 0 for a task with a loss, got {n}")
        buf[0, names.index(task)] = n
        buf[1, names.index(task)] = n * float(value.detach())
    mine = buf[0].clone()
    all_reduce_sum(buf, ctx)
    present = [i for i in range(len(names)) if buf[0, i] > 0]
    total = buf[0, present]
    return present, buf[1, present] / total, mine[present] / total


def distributed_backward(
    losses: dict[str, Tensor],
    method: Balancer,
    ctx: DistContext,
    counts: Mapping[str, float] | None,
    features: Features | None,
    shared_params: Iterable[Tensor] | None,
    mode: Mode,
    head_grad: HeadGrad,
    step: int | None,
) -> BackwardResult:
    """:func:`manytask.backward` on one rank of ``ctx`` (called by it; see the module doc).

    Scaling: rank ``r`` backpropagates ``c_kr = R n_kr / N_k * L_kr`` for each task, so that
    averaging the gradients over the ``R`` ranks gives ``sum_r n_kr / N_k grad L_kr``, the
    gradient of the global-batch loss ``L_k``. The balancer gets ``L_k`` as values, with
    ``c_kr``'s gradient attached, so loss-level objectives that are any function of the losses
    (uncertainty weighting's, ...) differentiate to the global-batch gradient too.
    """
    if not method.task_names:
        raise ValueError(
            "distributed backward: call method.setup(all task names) before the first step, "
            "so that every rank agrees on the tasks"
        )
    names = method.task_names
    method.index(list(losses))  # unknown task names fail here, on the rank that has them
    if counts is not None:
        missing = [t for t in losses if t not in counts]
        if missing:
            raise ValueError(f"counts= has no entry for task(s) {missing}")
    present, global_loss, share = global_losses(losses, counts, names, ctx)
    tasks = tuple(names[i] for i in present)
    if not tasks:
        return BackwardResult(tasks=(), weights={}, losses={})
    finite = torch.isfinite(global_loss)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(tasks[bad], float(global_loss[bad]), step)
    r = ctx.world_size
    local = [j for j, t in enumerate(tasks) if t in losses]
    contrib = {tasks[j]: losses[tasks[j]] * float(share[j] * r) for j in local}
    first = next(iter(losses.values()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else torch.device("cpu")
    values = global_loss.to(device=device, dtype=dtype)
    # value L_k exactly (c - c == 0), gradient that of c_kr
    stacked = torch.stack(
        [
            contrib[t] - contrib[t].detach() + values[j] if t in contrib else values[j]
            for j, t in enumerate(tasks)
        ]
    )
    local_losses = torch.stack([contrib[tasks[j]] for j in local]) if local else None

    def weights_of(decision_weights: Tensor) -> Tensor:
        _check_weights(method, decision_weights, len(tasks))
        return decision_weights

    if method.requires == "losses":
        with one_blas_thread():
            decision = method.decide(stacked, tasks, None)
        weights = weights_of(decision.weights)
        _backward_objective(decision.objective, weights, stacked)
        return _result(tasks, weights, stacked, None)

    feats, params = gradient_inputs(method, features, shared_params)
    if mode == "exact" and not params:
        raise ValueError("mode='exact' needs shared_params (the parameters of the shared part)")
    fgrads, blocks = _local_gradients(
        [contrib[tasks[j]] for j in local], local, len(tasks), feats, mode, params
    )
    # Gradients of c_kr are R times this rank's share of the global-batch gradient.
    if mode == "exact":
        blocks = [b / r for b in all_reduce_blocks(blocks, ctx)]
    jac_offset = 0
    if method.requires == "jacobian":
        if mode == "exact":
            jac = torch.cat([b.reshape(len(tasks), -1) for b in blocks], dim=1)
        else:
            mine = torch.cat([b.reshape(len(tasks), -1) for b in blocks], dim=1) / r
            jac, jac_offset = gather_columns(mine, ctx)
        gramian = jac.double() @ jac.double().T
        with one_blas_thread():
            decision = method.decide_jacobian(stacked, tasks, jac)
        weights = weights_of(decision.weights)
        if decision.update is None:
            raise RuntimeError(f"{method.name} returned no update vector")
        if mode == "exact":
            update = decision.update  # already global: averaging identical values keeps it
            targets: list[Tensor] = params or []
        else:
            width = sum(f.numel() for f in feats)
            update = decision.update[jac_offset : jac_offset + width] * r
            targets = feats
        _apply_local(targets, update, local_losses, weights, local, head_grad)
        return _result(tasks, weights, stacked, gramian)

    if mode == "exact":
        gramian = gramian_of(blocks)
    else:
        gramian = all_reduce_sum(gramian_of(fgrads), ctx) / (r * r)
    with one_blas_thread():
        decision = method.decide(stacked, tasks, gramian)
    weights = weights_of(decision.weights)
    if method.applies_to_heads:
        _backward_objective(decision.objective, weights, stacked)
        return _result(tasks, weights, stacked, gramian)
    update = torch.cat(
        [
            torch.tensordot(weights.to(device=g.device, dtype=g.dtype), g, dims=1).reshape(-1)
            for g in fgrads
        ]
    )
    heads = weights if decision.head_weights is None else decision.head_weights
    _apply_local(feats, update, local_losses, heads, local, head_grad)
    return _result(tasks, weights, stacked, gramian)


def _backward_objective(objective: Tensor | None, weights: Tensor, stacked: Tensor) -> None:
    if objective is None:
        objective = (weights.to(device=stacked.device, dtype=stacked.dtype) * stacked).sum()
    if objective.requires_grad:  # a rank with no labelled task may have nothing to send back
        objective.backward()


def _local_gradients(
    losses: list[Tensor],
    local: list[int],
    k: int,
    feats: list[Tensor],
    mode: Mode,
    params: list[Tensor] | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """This rank's per-task feature gradients and Jacobian blocks, with a zero row for each
    task labelled on another rank only (its gradient here is zero)."""
    targets = feats if mode == "feature" else (params or [])
    fgrads = [torch.zeros((k, *f.shape), dtype=f.dtype, device=f.device) for f in feats]
    blocks = (
        fgrads
        if mode == "feature"
        else [torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device) for p in targets]
    )
    if not local:
        return fgrads, blocks
    grads = task_gradients(losses, feats, mode=mode, shared_params=params)
    rows = torch.tensor(local, dtype=torch.long)
    for full, part in zip(fgrads, grads.feature_grads, strict=True):
        full[rows.to(full.device)] = part
    if mode == "exact":
        for full, part in zip(blocks, grads.blocks, strict=True):
            full[rows.to(full.device)] = part
    return fgrads, blocks


def _apply_local(
    targets: list[Tensor],
    update: Tensor,
    local_losses: Tensor | None,
    weights: Tensor,
    local: list[int],
    head_grad: HeadGrad,
) -> None:
    """Send ``update`` into ``targets`` and this rank's task gradients into the heads."""
    if local_losses is not None:
        _apply_update(targets, update, local_losses, weights[local], head_grad)
        return
    # No labelled task here, so no loss to backpropagate: push the update in directly.
    pieces = update.split([t.numel() for t in targets])
    values = [p.reshape(t.shape).to(t.dtype) for p, t in zip(pieces, targets, strict=True)]
    if any(t.grad_fn is not None for t in targets):  # features: through the shared part
        torch.autograd.backward(targets, values)
    else:  # parameters: accumulate as Tensor.backward would
        for t, v in zip(targets, values, strict=True):
            t.grad = v.clone() if t.grad is None else t.grad + v
