"""One call inside any training loop: ``manytask.backward(losses, method, ...)``.

It fills ``.grad`` of the model's parameters (adding to what is there, as ``Tensor.backward``
does) and returns what the method decided, for logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .balancers.base import Balancer
from .balancers.blas import one_blas_thread
from .gradients import Features, Mode, cosine_similarity, feature_tensors, task_gradients

HeadGrad = Literal["own", "weighted"]


class GradientOverflowError(FloatingPointError):
    """Scaled (fp16) per-task gradients overflowed; the method was not asked to decide."""


class NonFiniteLossError(FloatingPointError):
    """A task's loss is NaN or infinite; nothing was backpropagated."""

    def __init__(self, task: str, value: float, step: int | None = None) -> None:
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"loss of task {task!r} is {value}{where}; no gradient was applied")
        self.task = task
        self.step = step


@dataclass
class BackwardResult:
    """What one call of :func:`backward` decided.

    ``weights`` maps each present task to its coefficient; ``cosine`` is the pairwise cosine
    similarity of the task gradients (``None`` for loss-level methods, which compute none).
    """

    tasks: tuple[str, ...]
    weights: dict[str, float]
    losses: dict[str, float]
    gramian: Tensor | None = None

    @property
    def cosine(self) -> Tensor | None:
        return None if self.gramian is None else cosine_similarity(self.gramian)


def backward(
    losses: Mapping[str, Tensor],
    method: Balancer,
    *,
    features: Features | None = None,
    shared_params: Iterable[Tensor] | None = None,
    mode: Mode = "exact",
    head_grad: HeadGrad = "own",
    step: int | None = None,
    counts: Mapping[str, float] | None = None,
    process_group: Any = None,
    loss_scale: float = 1.0,
) -> BackwardResult:
    """Backpropagate the per-task ``losses`` as ``method`` decides.

    Args:
        losses: ``{task: scalar loss}`` for the tasks present in this batch (absent tasks are
            simply left out).
        method: a :class:`~manytask.balancers.Balancer`. It is set up with the task names of
            the first call unless :meth:`~manytask.balancers.Balancer.setup` was called before
            (call it yourself if a task may be missing from the first batch).
        features: the shared features the heads read (a tensor, a sequence or a mapping of
            tensors). Needed by gradient-level methods.
        shared_params: parameters of the shared part; needed by gradient-level methods in
            ``mode="exact"``.
        mode: ``"exact"`` (gradients w.r.t. ``shared_params``) or ``"feature"`` (w.r.t.
            ``features``); ignored by loss-level methods.
        head_grad: for gradient-level methods, whether each head gets its own task's gradient
            unweighted (``"own"``, default) or scaled by its task's weight (``"weighted"``).
        step: only used in error messages.
        counts: ``{task: number of labelled samples behind its loss}``. Only read in
            distributed training, where the global loss of a task is the labelled-sample-weighted
            mean over ranks (without it, each rank where the task is present counts once).
        process_group: the ``torch.distributed`` group to train in (default: the default group
            when ``torch.distributed`` is initialised with more than one process). Then every
            rank passes the losses of its shard of the global batch, the balancer decides on
            global-batch information (see :mod:`manytask.training.distributed`), and the caller
            averages the gradients over ranks afterwards with
            :func:`~manytask.training.distributed.sync_gradients` (one all-reduce, as
            DistributedDataParallel does). Do not wrap the model in DistributedDataParallel
            for gradient-level methods: with ``find_unused_parameters=True`` (which a task
            absent from a shard needs) its forward hands back copies of the outputs, so the
            features returned are not the tensors the heads read.
            A rank whose shard has no labelled task still calls ``backward`` with ``{}``. If no
            rank has one, nothing is backpropagated and the result has no task.
        loss_scale: the factor the ``losses`` were multiplied by (fp16 gradient scaling).
            The method decides on the losses, Gramian and Jacobian with it divided out (as
            in float32, up to rounding); the gradients written stay scaled, for the scaler to
            unscale. A non-finite scaled Gramian or Jacobian (an overflow) raises
            :class:`GradientOverflowError` before the method decides, so its state is kept.

    Raises:
        NonFiniteLossError: a loss is NaN or inf (checked before anything is backpropagated).
    """
    if head_grad not in ("own", "weighted"):
        raise ValueError(f"head_grad must be 'own' or 'weighted', got {head_grad!r}")
    tasks = tuple(losses)
    values = [losses[t] for t in tasks]
    for task, value in zip(tasks, values, strict=True):
        if value.dim() != 0:
            raise ValueError(
                f"loss of task {task!r} must be a scalar, got shape {tuple(value.shape)}"
            )
        if not value.requires_grad:
            raise ValueError(f"loss of task {task!r} does not require grad (detached?)")
    if process_group is not None or torch.distributed.is_initialized():
        from .training.distributed import context, distributed_backward

        ctx = context(process_group)
        if ctx is not None:  # more than one process
            return distributed_backward(
                dict(losses), method, ctx, counts, features, shared_params, mode, head_grad, step
            )
    if not losses:
        raise ValueError("backward() got no task loss: every task is absent from this batch")
    stacked = torch.stack(values)
    finite = torch.isfinite(stacked.detach())
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(tasks[bad], float(stacked[bad].detach()), step)
    if not method.task_names:
        method.setup(tasks)
    scale = float(loss_scale)
    shown = stacked / scale if scale != 1.0 else stacked  # what the method decides on

    if method.requires == "losses":
        with one_blas_thread():
            decision = method.decide(shown, tasks, None)
        _check_weights(method, decision.weights, len(tasks))
        objective = decision.objective
        if objective is None:
            objective = (
                decision.weights.to(device=stacked.device, dtype=stacked.dtype) * shown
            ).sum()
        (objective * scale if scale != 1.0 else objective).backward()
        return _result(tasks, decision.weights, shown, None)

    feats, params = gradient_inputs(method, features, shared_params)
    # Where the update replaces the features' gradient, the heads' gradients are taken in the
    # per-task passes, so that only the shared part is backpropagated once more.
    at_features = not method.applies_to_heads and (
        method.requires != "jacobian" or mode == "feature"
    )
    grads = task_gradients(values, feats, mode=mode, shared_params=params,
                           with_heads=at_features)
    gramian = grads.gramian
    if scale != 1.0:
        if not bool(torch.isfinite(gramian).all()):
            raise GradientOverflowError(f"scaled gradients overflowed (scale {scale:g})")
        gramian = gramian / scale**2
    if method.requires == "jacobian":
        jacobian = grads.jacobian_matrix()
        with one_blas_thread():
            decision = method.decide_jacobian(shown, tasks, jacobian / scale)
        _check_weights(method, decision.weights, len(tasks))
        if decision.update is None:
            raise RuntimeError(f"{method.name} returned no update vector")
        targets = feats if mode == "feature" else (params or [])
        _apply_update(targets, decision.update * scale, stacked, decision.weights, head_grad,
                      grads.head_grads)
        return _result(tasks, decision.weights, shown, gramian)
    with one_blas_thread():
        decision = method.decide(shown, tasks, gramian)
    weights = decision.weights
    _check_weights(method, weights, len(tasks))

    if method.applies_to_heads:  # a loss weighting driven by gradient information (GradNorm)
        objective = decision.objective
        if objective is None:
            objective = (weights.to(device=stacked.device, dtype=stacked.dtype) * shown).sum()
        (objective * scale if scale != 1.0 else objective).backward()
        return _result(tasks, weights, shown, gramian)

    # The shared part gets sum_k w_k g_k: replace the gradient that reaches each feature tensor.
    update = torch.cat(
        [
            torch.tensordot(weights.to(device=g.device, dtype=g.dtype), g, dims=1).reshape(-1)
            for g in grads.feature_grads
        ]
    )
    _apply_update(feats, update, stacked, weights, head_grad, grads.head_grads)
    return _result(tasks, weights, shown, gramian)


def gradient_inputs(
    method: Balancer, features: Features | None, shared_params: Iterable[Tensor] | None
) -> tuple[list[Tensor], list[Tensor] | None]:
    """The feature tensors and trainable shared parameters a gradient-level method works on."""
    if features is None:
        raise ValueError(f"{method.name} works on task gradients: pass features=")
    feats = feature_tensors(features)
    if not feats:
        raise ValueError("features= holds no tensor that requires grad")
    params = None if shared_params is None else [p for p in shared_params if p.requires_grad]
    return feats, params


def _apply_update(
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
    running every head's backward a second time (2.2–2.7 ms of a 19–22 ms step at K = 40
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


def _check_weights(method: Balancer, weights: Tensor, k: int) -> None:
    if weights.shape != (k,):
        raise RuntimeError(
            f"{method.name} returned weights of shape {tuple(weights.shape)}, expected ({k},)"
        )
    if not bool(torch.isfinite(weights).all()):
        raise FloatingPointError(f"{method.name} produced non-finite weights {weights.tolist()}")


def _result(
    tasks: tuple[str, ...], weights: Tensor, losses: Tensor, gramian: Tensor | None
) -> BackwardResult:
    w = weights.detach().double().tolist()
    lv = losses.detach().double().tolist()
    return BackwardResult(
        tasks=tasks,
        weights=dict(zip(tasks, w, strict=True)),
        losses=dict(zip(tasks, lv, strict=True)),
        gramian=gramian,
    )
