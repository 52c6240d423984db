"""Every task's feature gradient ``dL_k/dz`` from one backward of ``sum_k L_k``, when the heads
are disjoint.

Backpropagating ``sum_k L_k`` down to the features ``z``, the gradient that a node sends along
an edge into ``z`` is the sum over the losses above it. When the autograd graphs of the heads
(everything a loss reaches before ``z``) share no node -- no layer, no parameter, no loss that
reads two heads -- only ``L_k`` lies above the nodes of head ``k``, so the gradients they send
into ``z`` add up to ``dL_k/dz``. A hook on each such node reads them during the one backward,
which also gives each head's parameters their own task's gradient. This replaces K backward
calls (one per head) with one; where the heads share a node, :func:`head_edges` returns
``None`` and the caller takes one backward per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import Node


@dataclass
class HeadEdges:
    """Per task, the edges into the features: ``(node, input position, feature index)``."""

    edges: list[list[tuple[Node, int, int]]]


def head_edges(losses: Sequence[Tensor], features: Sequence[Tensor]) -> HeadEdges | None:
    """The edges through which each loss reads the features, or ``None`` when two losses'
    graphs above the features share a node (or a feature is a leaf)."""
    if any(f.grad_fn is None for f in features):
        return None
    targets = {(f.grad_fn, f.output_nr): i for i, f in enumerate(features)}
    stop = {f.grad_fn for f in features}
    owner: dict[Node, int] = {}
    edges: list[list[tuple[Node, int, int]]] = []
    for k, loss in enumerate(losses):
        mine: list[tuple[Node, int, int]] = []
        stack = [loss.grad_fn] if loss.grad_fn is not None else []
        while stack:
            node = stack.pop()
            seen = owner.get(node)
            if seen == k:
                continue
            if seen is not None:
                return None  # a node above the features that two heads share
            owner[node] = k
            for position, (child, nr) in enumerate(node.next_functions):
                if child is None:
                    continue
                index = targets.get((child, nr))
                if index is not None:
                    mine.append((node, position, index))
                elif child not in stop:
                    stack.append(child)
        edges.append(mine)
    return HeadEdges(edges)


def one_pass(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    heads: Sequence[Sequence[Tensor]],
    found: HeadEdges,
) -> tuple[list[Tensor], list[list[tuple[Tensor, Tensor]]]]:
    """``dL_k/dz`` stacked on a task axis for each feature tensor, and each task's gradients
    w.r.t. its head's leaves ``heads[k]``, from one backward (see the module docstring)."""
    k_tasks = len(losses)
    sums: list[list[Tensor | None]] = [[None] * len(features) for _ in range(k_tasks)]
    handles = []
    for k, task_edges in enumerate(found.edges):
        by_node: dict[Node, list[tuple[int, int]]] = {}
        for node, position, index in task_edges:
            by_node.setdefault(node, []).append((position, index))
        for node, picks in by_node.items():

            def keep(grad_inputs: tuple[Tensor | None, ...], _outputs: tuple[Tensor, ...],
                     k: int = k, picks: list[tuple[int, int]] = picks) -> None:
                for position, index in picks:
                    g = grad_inputs[position]
                    if g is not None:
                        held = sums[k][index]
                        sums[k][index] = g if held is None else held + g

            handles.append(node.register_hook(keep))
    leaves = [leaf for task in heads for leaf in task]
    try:
        # several scalar outputs: their gradients start at 1, as for the sum of the losses
        grads = torch.autograd.grad(list(losses), [*features, *leaves], retain_graph=True,
                                    allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    stacked = [torch.stack([_or_zeros(sums[k][i], f) for k in range(k_tasks)])
               for i, f in enumerate(features)]
    own, start = [], len(features)
    for task in heads:
        pairs = zip(task, grads[start: start + len(task)], strict=True)
        own.append([(leaf, g) for leaf, g in pairs if g is not None])
        start += len(task)
    return stacked, own


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    """A gradient that never arrived (the loss does not read this feature) is zero."""
    return grad if grad is not None else torch.zeros_like(like)
