"""Per-task gradients across processes whose shards do not all label the same tasks.

Every rank must run the same autograd passes through the model: with the shared part sharded
by FSDP (``fully_shard``), a pass that reaches the shared part's outputs runs FSDP's hooks,
which all-gather the parameters an earlier pass resharded and reduce-scatter the gradients a
pass wrote; a rank that skips a pass leaves the others waiting in a collective. When every
task of the step is labelled on every rank (``TaskBatch.uniform``), the ranks run the same
passes on their own losses (:func:`~.gradients.task_gradients`). Otherwise every rank runs,
whatever its shard holds:

* one pass per task of the step, through that task's head down to the features: its loss where
  the task is labelled here, else a **zero pass** (the gradient of ``sum_z 0 * sum(z)`` with
  respect to the feature tensors ``z``: zeros, through no head);
* in exact mode, one batched pass of all K feature-gradient rows through the shared part
  (:func:`~.gradients.jacobian`), the rows of the tasks absent here being zeros;
* then the application of the decision: one pass into the shared part, on a rank with no
  labelled task too (:class:`IdleRank`).

The zero rows and passes contribute nothing: the result is this rank's per-task gradients with
a zero row for each task labelled on other ranks only, as before, and the same collectives run
on every rank. Cost, on such steps only: one head backward per task instead of one for all
(:mod:`.head_pass`), and K rows in the batched pass instead of this rank's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .gather import TaskBatch
from .gradients import Mode, TaskGradients, head_leaves, jacobian
from .gramian import gramian_of


class Probing:
    """Set while the engine runs its gradient passes (not the decision's application), so that
    :class:`IdleRank` counts only passes that send the decision into the shared part. A plain
    flag, not thread-local: autograd runs hooks on its own threads for accelerators."""

    def __init__(self) -> None:
        self.active = False

    def __enter__(self) -> Probing:
        self.active = True
        return self

    def __exit__(self, *_: object) -> None:
        self.active = False


PROBING = Probing()


def zero_pass(feats: list[Tensor]) -> None:
    """A backward pass that reaches every feature tensor with a zero gradient and goes no
    further: it runs the hooks on the shared part's outputs as a head pass does."""
    total = torch.stack([(f * 0).sum() for f in feats]).sum()
    torch.autograd.grad(total, feats, allow_unused=True)


def uneven_gradients(
    batch: TaskBatch,
    feats: list[Tensor],
    mode: Mode,
    params: list[Tensor] | None,
    with_heads: bool,
) -> TaskGradients:
    """The passes of the module docstring: one per task of the step (zero where the task is
    not labelled here), then in exact mode one batched pass of all K rows. Run under
    :data:`PROBING`."""
    k, n = len(batch.tasks), len(feats)
    heads = head_leaves(batch.local_losses, feats) if with_heads and batch.local else None
    position = {j: i for i, j in enumerate(batch.local)}
    rows: list[list[Tensor]] = []
    own: list[list[tuple[Tensor, Tensor]]] = [[] for _ in batch.local]
    for j in range(k):
        i = position.get(j)
        if i is None:
            zero_pass(feats)
            rows.append([torch.zeros_like(f) for f in feats])
            continue
        leaves = heads[i] if heads is not None else []
        grads = torch.autograd.grad(batch.local_losses[i], [*feats, *leaves],
                                    retain_graph=True, allow_unused=True)
        rows.append([g if g is not None else torch.zeros_like(f)
                     for g, f in zip(grads[:n], feats, strict=True)])
        own[i] = [(leaf, g) for leaf, g in zip(leaves, grads[n:], strict=True) if g is not None]
    fgrads = [torch.stack([row[m] for row in rows]) for m in range(n)]
    head_grads = own if heads is not None else None
    if mode == "feature":
        return TaskGradients(gramian_of(fgrads), fgrads, fgrads, head_grads)
    assert params is not None
    blocks = jacobian(feats, fgrads, params)
    return TaskGradients(gramian_of(blocks), fgrads, blocks, head_grads)


class IdleRank:
    """On a rank with no labelled sample in its shard, make sure the shared part's backward
    runs (with zero gradients if the decision sent nothing into it), after the engine's own
    collectives: with FSDP that backward is a collective (the gradients' reduce-scatter) that
    every rank must join. Needs ``features=``; nothing to do on a rank with a labelled task.
    The engine's gradient passes (:data:`PROBING`) do not count: they write no gradient."""

    def __init__(self, batch: TaskBatch, features: list[Tensor]) -> None:
        self.tensors = [] if batch.local else features
        self.reached = False
        self.handles: list[Any] = []

    def __enter__(self) -> IdleRank:
        self.handles = [t.register_hook(self.seen) for t in self.tensors]
        return self

    def seen(self, grad: Tensor) -> None:
        if not PROBING.active:
            self.reached = True

    def __exit__(self, kind: object, *_: object) -> None:
        for handle in self.handles:
            handle.remove()
        if kind is None and self.tensors and not self.reached:
            torch.autograd.backward(self.tensors, [torch.zeros_like(t) for t in self.tensors])
