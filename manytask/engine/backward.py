"""One call inside any training loop: ``manytask.backward(losses, method, ...)``.

It fills ``.grad`` of the model's parameters (adding to what is there, as ``Tensor.backward``
does) and returns what the method decided, for logging. One pipeline, whatever the method's
kind and the number of processes (a single process is a process group of one):

1. **check** the losses (scalars attached to the graph);
2. **gather** them across processes (:func:`~manytask.engine.collectives.global_losses`), and
   check that the global losses are finite;
3. the pipeline's **parts** see the losses (Rep-MTL's regulariser, :mod:`.rep_mtl`);
4. per-task gradient information as the method's kind needs it (:mod:`.gradients`; for
   linear heads at the feature level, :mod:`.linear_heads`, with no per-task gradient formed),
   reduced across processes; the method **decides** (unless its schedule reuses earlier
   weights);
5. **apply** the decision (:mod:`.apply`), plus any part's addition to the shared update
   (flat regions, :mod:`.flat`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ..balancers.base import (
    Balancer,
    Decision,
    GramianLossWeighting,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
)
from .apply import HeadGrad, apply_local, backward_objective
from .blas import one_blas_thread
from .collectives import (
    all_reduce_blocks,
    all_reduce_sum,
    gather_columns,
    group_of,
    sharded_gramian,
)
from .gather import NonFiniteLossError, TaskBatch, check_losses, gather
from .gradients import (
    MODES,
    Features,
    Mode,
    TaskGradients,
    feature_tensors,
    gramian_of,
    task_gradients,
)
from .linear_heads import LinearHeads, linear_heads
from .parts import Part, StepView
from .result import BackwardResult, check_weights, result_of
from .stepped import check_stepped, record_stepped
from .uneven import PROBING, IdleRank, uneven_gradients


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
    parts: Sequence[Part] = (),
    loss_scale: float = 1.0,
) -> BackwardResult:
    """Backpropagate the per-task ``losses`` as ``method`` decides.

    Args:
        losses: ``{task: scalar loss}`` for the tasks present in this batch (absent tasks are
            simply left out).
        method: a :class:`~manytask.balancers.Balancer`. It is set up with the task names of
            the first call unless :meth:`~manytask.balancers.Balancer.setup` was called before
            (call it yourself, or build it with ``make_balancer(name, tasks=[...])``, if a task
            may be missing from the first batch).
        features: the shared features the heads read (a tensor, a sequence or a mapping of
            tensors). Needed by gradient-level methods.
        shared_params: parameters of the shared part; needed by gradient-level methods in
            ``mode="exact"``.
        mode: ``"exact"`` (gradients w.r.t. ``shared_params``) or ``"feature"`` (w.r.t.
            ``features``); ignored by loss weightings.
        head_grad: for methods that combine gradients, whether each head gets its own task's
            gradient unweighted (``"own"``, default) or scaled by its task's weight
            (``"weighted"``).
        step: only used in error messages.
        counts: ``{task: number of labelled samples behind its loss}``. Only read in
            distributed training, where the global loss of a task is the labelled-sample-weighted
            mean over ranks (without it, each rank where the task is present counts once).
        process_group: the ``torch.distributed`` group to train in (default: the default group
            when ``torch.distributed`` is initialised with more than one process). Every rank
            passes the losses of its shard of the global batch, the method decides on
            global-batch information (see :mod:`manytask.engine.collectives`), and the caller
            averages the gradients over ranks afterwards with
            :func:`~manytask.engine.collectives.sync_gradients`. Do not wrap the model in
            DistributedDataParallel for gradient-level methods: with
            ``find_unused_parameters=True`` its forward hands back copies of the outputs, so
            the features returned are not the tensors the heads read. A rank whose shard has
            no labelled task still calls ``backward`` with ``{}``. If no rank has one, nothing
            is backpropagated and the result has no task.
        parts: composable additions to the pipeline (:class:`~manytask.engine.rep_mtl.RepMTL`,
            :class:`~manytask.engine.flat.FlatRegions`).
        loss_scale: the factor the ``losses`` were multiplied by (fp16 gradient scaling). The
            method decides on the losses, Gramian and Jacobian with it divided out (as in
            float32, up to rounding); the gradients written stay scaled, for the scaler to
            unscale. A non-finite scaled Gramian or Jacobian (an overflow) raises
            :class:`GradientOverflowError` before the method decides, so its state is kept.

    Raises:
        NonFiniteLossError: a loss is NaN or inf (checked before anything is backpropagated).
        RuntimeError: the method's own parameters got gradients at the previous call but an
            optimizer stepped without them (see :mod:`.stepped`).
    """
    if head_grad not in ("own", "weighted"):
        raise ValueError(f"head_grad must be 'own' or 'weighted', got {head_grad!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    scale = float(loss_scale)
    if not (scale > 0 and scale < float("inf")):
        raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale!r}")
    check_losses(losses)
    check_stepped(method)
    group = group_of(process_group)
    batch = gather(losses, method, group, counts, step)
    if batch is None:
        return BackwardResult(tasks=(), weights={}, losses={})
    for part in parts:
        part.on_losses(losses, features)
    with IdleRank(batch, [] if features is None else feature_tensors(features)):
        result = decide_and_apply(batch, method, features, shared_params, mode, head_grad,
                                  parts, scale)
    record_stepped(method)
    return result


def decide_and_apply(
    batch: TaskBatch,
    method: Balancer,
    features: Features | None,
    shared_params: Iterable[Tensor] | None,
    mode: Mode,
    head_grad: HeadGrad,
    parts: Sequence[Part],
    scale: float = 1.0,
) -> BackwardResult:
    """Steps 4 and 5 of the pipeline, dispatched on the method's kind. With a loss ``scale``
    (fp16), the method sees the unscaled losses and gradient information (:class:`Unscale`)."""
    tasks, stacked = batch.tasks, batch.stacked
    unscale = Unscale(scale)
    shown = unscale.losses(stacked)
    schedule = method.schedule
    if method.requires == "losses":
        with one_blas_thread():
            decision = cast(LossWeighting, method).decide(shown, tasks)
        check_weights(method, decision.weights, len(tasks))
        backward_objective(unscale.objective(decision.objective), decision.weights, stacked)
        return result_of(tasks, decision.weights, shown, None)
    if schedule is not None and not schedule.due():  # reuse: no task gradient at all
        weights = schedule.reuse(method.index(tasks))
        backward_objective(None, weights, stacked)
        return result_of(tasks, weights, shown, None)

    feats, params = gradient_inputs(method, features, shared_params)
    if mode == "exact" and not params:
        raise ValueError("mode='exact' needs shared_params (the parameters of the shared part)")
    extra = [p for p in parts if p.adds_update]
    if extra and (mode != "exact" or method.requires != "gramian" or method.weights_losses):
        raise ValueError(
            f"{type(extra[0]).__name__} needs mode='exact' and a method combining task "
            f"gradients from their Gramian, got {method.name!r}"
        )
    # Where the update replaces the features' gradient, each head's gradient is taken in the
    # per-task passes, so only the shared part is backpropagated once more.
    at_features = not method.weights_losses and not extra and (
        method.requires == "gramian" or mode == "feature"
    )
    if (at_features and mode == "feature" and r_is_one(batch) and method.requires == "gramian"):
        fast = linear_heads(batch.local_losses, feats)
        if fast is not None:  # no per-task gradient at all (see .linear_heads)
            return apply_linear_heads(batch, method, fast, feats, head_grad, unscale)
    grads = local_gradients(batch, feats, mode, params, at_features)
    r = batch.group.world_size
    blocks = grads.blocks
    # Across processes, a Gramian method without a part needs only the global Gramian, a sum
    # over parameter blocks: each rank forms its slice's part (sharded_gramian). The others
    # need the global per-task gradients themselves.
    sliced = mode == "exact" and r > 1 and method.requires == "gramian" and not extra
    if mode == "exact" and r > 1 and not sliced:
        blocks = [b / r for b in all_reduce_blocks(blocks, batch.group)]

    if method.requires == "jacobian":
        width = sum(f.numel() for f in feats)
        jac = torch.cat([b.reshape(len(tasks), -1) for b in blocks], dim=1)
        offset = 0
        if mode == "feature" and r > 1:
            jac, offset = gather_columns(jac / r, batch.group)
        gramian = unscale.gramian(grads.gramian if r == 1 else gramian_of([jac]))
        with one_blas_thread():
            decision = cast(JacobianAggregator, method).decide(shown, tasks,
                                                               unscale.jacobian(jac))
        weights = check_weights(method, decision.weights, len(tasks))
        if schedule is not None:
            schedule.record(method.index(tasks), weights)
        if decision.update is None:
            raise RuntimeError(f"{method.name} returned no update vector")
        decision.update = decision.update * scale if scale != 1.0 else decision.update
        if mode == "exact":  # already global: averaging identical values keeps it
            apply_local(params or [], decision.update, batch.local_losses, weights, batch.local,
                        head_grad, None)
        else:
            update = decision.update[offset: offset + width]
            apply_local(feats, update * r if r > 1 else update, batch.local_losses, weights,
                        batch.local, head_grad, grads.head_grads)
        return result_of(tasks, weights, shown, gramian)

    if r == 1:
        gramian = grads.gramian
    elif sliced:  # of the rank-averaged gradients sum_r J_r / r
        gramian = sharded_gramian(blocks, batch.group) / (r * r)
    elif mode == "exact":
        gramian = gramian_of(blocks)
    else:
        gramian = all_reduce_sum(grads.gramian.clone(), batch.group) / (r * r)
    gramian = unscale.gramian(gramian)
    with one_blas_thread():
        decision = cast(GramianWeighting | GramianLossWeighting, method).decide(
            shown, tasks, gramian
        )
    weights = check_weights(method, decision.weights, len(tasks))
    if schedule is not None:
        schedule.record(method.index(tasks), weights)
    if method.weights_losses:  # a loss weighting driven by gradient information
        backward_objective(unscale.objective(decision.objective), weights, stacked)
        return result_of(tasks, weights, shown, gramian)
    if extra:  # applied at the parameters: sum_k w_k g_k plus each part's addition
        jac = torch.cat([b.reshape(len(tasks), -1) for b in blocks], dim=1)
        update = weights.to(jac.dtype) @ jac
        view = StepView(method, tasks, stacked, jac, params or [])
        for part in extra:
            update = update + part.shared_update(view)
        apply_local(params or [], update, batch.local_losses, weights, batch.local, head_grad,
                    None)
        return result_of(tasks, weights, shown, gramian)
    # The shared part gets sum_k w_k g_k: replace the gradient that reaches each feature tensor.
    update = torch.cat(
        [
            torch.tensordot(weights.to(device=g.device, dtype=g.dtype), g, dims=1).reshape(-1)
            for g in grads.feature_grads
        ]
    )
    # Nash-MTL's peer convention: heads weighted by the unclipped weights (Decision docs)
    heads = weights if decision.head_weights is None else decision.head_weights
    apply_local(feats, update, batch.local_losses, heads, batch.local, head_grad,
                grads.head_grads)
    return result_of(tasks, weights, shown, gramian)


def r_is_one(batch: TaskBatch) -> bool:
    return batch.group.world_size == 1


def apply_linear_heads(
    batch: TaskBatch, method: Balancer, heads: LinearHeads, feats: list[Tensor],
    head_grad: HeadGrad, unscale: Unscale,
) -> BackwardResult:
    """Decide on the Gramian of :class:`LinearHeads` and send ``sum_k w_k g_k`` into the
    features, each head its own gradient (or weighted)."""
    tasks, shown = batch.tasks, unscale.losses(batch.stacked)
    gramian = unscale.gramian(heads.gramian())
    with one_blas_thread():
        decision = cast(GramianWeighting, method).decide(shown, tasks, gramian)
    weights = check_weights(method, decision.weights, len(tasks))
    if method.schedule is not None:
        method.schedule.record(method.index(tasks), weights)
    update = heads.combine(weights).reshape(-1)
    head_weights = weights if decision.head_weights is None else decision.head_weights
    apply_local(feats, update, batch.local_losses, head_weights, batch.local, head_grad,
                heads.head_grads)
    return result_of(tasks, weights, shown, gramian)


class GradientOverflowError(FloatingPointError):
    """Scaled (fp16) per-task gradients overflowed; the method was not asked to decide."""


class Unscale:
    """What a method sees under a loss scale ``s`` (fp16): losses ``/ s``, Gramian ``/ s^2``,
    Jacobian ``/ s`` (after checking the scaled ones are finite: an overflow raises
    :class:`GradientOverflowError` before any decision); its objective goes back ``* s``."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def losses(self, stacked: Tensor) -> Tensor:
        return stacked / self.scale if self.scale != 1.0 else stacked

    def objective(self, objective: Tensor | None) -> Tensor | None:
        return objective * self.scale if objective is not None and self.scale != 1.0 else \
            objective

    def gramian(self, gramian: Tensor) -> Tensor:
        if self.scale == 1.0:
            return gramian
        if not bool(torch.isfinite(gramian).all()):
            raise GradientOverflowError(f"scaled gradients overflowed (scale {self.scale:g})")
        return gramian / self.scale**2

    def jacobian(self, jacobian: Tensor) -> Tensor:
        if self.scale == 1.0:
            return jacobian
        if not bool(torch.isfinite(jacobian).all()):
            raise GradientOverflowError(f"scaled gradients overflowed (scale {self.scale:g})")
        return jacobian / self.scale


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


def local_gradients(
    batch: TaskBatch,
    feats: list[Tensor],
    mode: Mode,
    params: list[Tensor] | None,
    with_heads: bool,
) -> TaskGradients:
    """This rank's per-task gradients of its scaled losses, with a zero row for each task
    labelled on another rank only (its gradient here is zero). Where the ranks' shards do
    not all label every task, every rank runs the same passes (:mod:`.uneven`)."""
    if batch.uniform:  # every task labelled here, and on every rank
        return task_gradients(batch.local_losses, feats, mode=mode, shared_params=params,
                              with_heads=with_heads)
    with PROBING:
        return uneven_gradients(batch, feats, mode, params, with_heads)


__all__ = ["BackwardResult", "Decision", "HeadGrad", "NonFiniteLossError", "TaskBatch", "backward"]
