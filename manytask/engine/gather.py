"""Steps 1 and 2 of the pipeline: check the losses, gather them across processes.

A single process is a group of one: the all-reduce is the identity and the losses are used as
given; across processes, one all-reduce gives every rank the global losses
(:func:`~manytask.engine.collectives.global_losses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..balancers.base import Balancer
from .collectives import DistContext, reduce_losses


class NonFiniteLossError(FloatingPointError):
    """A task's loss is NaN or infinite; nothing was backpropagated."""

    def __init__(self, task: str, value: float, step: int | None = None) -> None:
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"loss of task {task!r} is {value}{where}; no gradient was applied")
        self.task = task
        self.step = step


@dataclass
class TaskBatch:
    """The losses after the gather: the ``tasks`` labelled on some rank (in the caller's order
    in a single process, the method's task order across processes), ``stacked`` their global
    values carrying this rank's gradient, and the ``local``
    positions with this rank's scaled losses ``local_losses`` (see :func:`gather`);
    ``uniform``: every task is labelled on every rank (then all ranks run the same autograd
    passes on their own losses; else see :mod:`.uneven`)."""

    tasks: tuple[str, ...]
    stacked: Tensor
    local: list[int]
    local_losses: list[Tensor]
    group: DistContext
    uniform: bool = True

    @property
    def all_local(self) -> bool:
        return self.group.world_size == 1


def check_losses(losses: Mapping[str, Tensor]) -> None:
    """Each loss is a scalar attached to the graph."""
    for task, value in losses.items():
        if value.dim() != 0:
            raise ValueError(
                f"loss of task {task!r} must be a scalar, got shape {tuple(value.shape)}"
            )
        if not value.requires_grad:
            raise ValueError(f"loss of task {task!r} does not require grad (detached?)")


def gather(
    losses: Mapping[str, Tensor],
    method: Balancer,
    group: DistContext,
    counts: Mapping[str, float] | None,
    step: int | None,
) -> TaskBatch | None:
    """The global losses of the tasks labelled on some rank (``None``: on none).

    Scaling: rank ``r`` of ``R`` backpropagates ``c_kr = R n_kr / N_k * L_kr`` for each task,
    so that averaging the gradients over ranks gives the gradient of the global-batch loss
    ``L_k``. The method gets ``L_k`` as values, with ``c_kr``'s gradient attached. In a group
    of one, ``c_k = L_k``.
    """
    single = group.world_size == 1
    if single and not losses:
        raise ValueError("backward() got no task loss: every task is absent from this batch")
    if not method.task_names:
        if not single:
            raise ValueError(
                "distributed backward: call method.setup(all task names) before the first "
                "step, so that every rank agrees on the tasks"
            )
        method.setup(tuple(losses))
    names = method.task_names
    method.index(list(losses))  # unknown task names fail here, on the rank that has them
    if counts is not None and not single:
        missing = [t for t in losses if t not in counts]
        if missing:
            raise ValueError(f"counts= has no entry for task(s) {missing}")
    if single:  # the all-reduce is the identity: c_k = L_k, in the caller's order
        given = list(losses.values())
        stacked = torch.stack(given)
        check_finite(tuple(losses), stacked.detach(), step)
        return TaskBatch(tuple(losses), stacked, list(range(len(given))), given, group)
    reduced = reduce_losses(losses, counts, names, group)
    present, global_loss, share = reduced.present, reduced.losses, reduced.share
    tasks = tuple(names[i] for i in present)
    if not tasks:
        return None
    check_finite(tasks, global_loss, step)
    r = group.world_size
    local = [j for j, t in enumerate(tasks) if t in losses]
    scales = (share * r).tolist()
    local_losses = [
        losses[tasks[j]] if scales[j] == 1.0 else losses[tasks[j]] * scales[j] for j in local
    ]
    first = next(iter(losses.values()), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else torch.device("cpu")
    values = global_loss.to(device=device, dtype=dtype)
    contrib = dict(zip((tasks[j] for j in local), local_losses, strict=True))
    # value L_k exactly (c - c == 0), gradient that of c_kr
    stacked = torch.stack(
        [
            contrib[t] - contrib[t].detach() + values[j] if t in contrib else values[j]
            for j, t in enumerate(tasks)
        ]
    )
    return TaskBatch(tasks, stacked, local, local_losses, group, reduced.uniform)


def check_finite(tasks: tuple[str, ...], values: Tensor, step: int | None) -> None:
    """Raise :class:`NonFiniteLossError` naming the first task whose loss is NaN or inf."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(tasks[bad], float(values[bad]), step)
