"""Applying a decision: what reaches ``.grad``.

Either the method's objective (``sum_k w_k L_k`` by default) is backpropagated through
everything, or the shared part receives a given update (``sum_k w_k g_k``, or a Jacobian
aggregator's vector) while each head receives its own task's gradient, unweighted
(``head_grad="own"``) or scaled by its weight (``"weighted"``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

HeadGrad = Literal["own", "weighted"]


def backward_objective(objective: Tensor | None, weights: Tensor, stacked: Tensor) -> None:
    """Backpropagate ``objective`` (default ``sum_k w_k L_k``) through everything."""
    if objective is None:
        objective = (weights.to(device=stacked.device, dtype=stacked.dtype) * stacked).sum()
    if objective.requires_grad:  # a rank with no labelled task may have nothing to send back
        objective.backward()


def apply_update(
    targets: list[Tensor],
    update: Tensor,
    losses: Tensor,
    weights: Tensor,
    head_grad: HeadGrad,
    head_grads: list[list[tuple[Tensor, Tensor]]] | None = None,
) -> None:
    """Backpropagate the losses with the gradient reaching each of ``targets`` (the shared
    parameters, or the features) replaced by its slice of ``update``.

    With ``head_grads`` (each task's gradients w.r.t. its head, ``targets`` being the
    features), the heads' gradients are accumulated from them and only the shared part is
    backpropagated, from the features: the same result as the full backward, without
    running every head's backward a second time (2.2-2.7 ms of a 19-22 ms step at K = 40
    in the step-cost benchmark).
    """
    total = sum(t.numel() for t in targets)
    if update.shape != (total,) or not bool(torch.isfinite(update).all()):
        raise FloatingPointError(
            f"update must be a finite vector of {total} values, got shape {tuple(update.shape)}"
        )
    pieces = [
        piece.reshape(target.shape).to(device=target.device, dtype=target.dtype)
        for target, piece in zip(targets, update.split([t.numel() for t in targets]),
                                 strict=True)
    ]
    head_weights = (
        torch.ones_like(losses)
        if head_grad == "own"
        else weights.to(device=losses.device, dtype=losses.dtype)
    )
    if head_grads is not None:
        scale = head_weights.detach().tolist()
        for k, pairs in enumerate(head_grads):
            for leaf, g in pairs:
                g = g if scale[k] == 1.0 else g.mul(scale[k])
                if leaf.grad is None:
                    leaf.grad = g
                else:
                    leaf.grad.add_(g)
        torch.autograd.backward(targets, grad_tensors=pieces)
        return
    handles = [
        target.register_hook(lambda _g, v=value: v)
        for target, value in zip(targets, pieces, strict=True)
    ]
    try:
        (head_weights * losses).sum().backward()
    finally:
        for handle in handles:
            handle.remove()


def apply_local(
    targets: list[Tensor],
    update: Tensor,
    local_losses: list[Tensor],
    weights: Tensor,
    local: list[int],
    head_grad: HeadGrad,
    head_grads: list[list[tuple[Tensor, Tensor]]] | None,
) -> None:
    """Send ``update`` into ``targets`` and this rank's task gradients into the heads
    (``local``: the positions of this rank's tasks among the decision's)."""
    if local_losses:
        apply_update(targets, update, torch.stack(local_losses), weights[local], head_grad,
                     head_grads)
        return
    # No labelled task here, so no loss to backpropagate: push the update in directly.
    pieces = update.split([t.numel() for t in targets])
    values = [p.reshape(t.shape).to(t.dtype) for p, t in zip(pieces, targets, strict=True)]
    if any(t.grad_fn is not None for t in targets):  # features: through the shared part
        torch.autograd.backward(targets, values)
    else:  # parameters: accumulate as Tensor.backward would
        for t, v in zip(targets, values, strict=True):
            t.grad = v.clone() if t.grad is None else t.grad + v
