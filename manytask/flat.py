"""Task-based flat regions: sharpness-aware minimisation per task, combined by any
gradient-level method (Phan, Tran, Le, Nguyen, Ho and Phung, "Improving Multi-task Learning via
Seeking Task-based Flat Regions", 2022, Algorithm 1 and Section 4).

For each task ``k`` the shared parameters are moved to the worst point of a ball of radius
``rho`` for that task alone, ``eps_k = rho g_k / ||g_k||`` (the first-order SAM step), and the
task's gradient is taken there: ``g_k^SAM = grad L_k(theta + eps_k)``. As the paper specifies,
each perturbed gradient is split into a *loss* part ``g_k`` (the gradient at ``theta``) and a
*flatness* part ``h_k = g_k^SAM - g_k``; each part is combined across tasks by the gradient
method, and the shared update is the sum of the two combinations:

    update = sum_k w_k g_k + sum_k v_k h_k,   w = method(G),  v = method(H),

with ``G`` and ``H`` the Gramians of the ``g_k`` and of the ``h_k``. With ``rho = 0`` the flatness
part vanishes and this is the plain method.

It needs extra forward passes (one per task, at each perturbed point), so it cannot be a plain
``decide``: :func:`flat_backward` takes a closure that re-runs the forward. Cost: 1 + K forwards
and about 1 + K backwards, plus two decisions of the method (a stateful method therefore
advances its state twice per step). Exact mode only: the perturbation lives in parameter space.

Heads get the gradient of their own loss at the unperturbed point (``head_grad="own"``) or
weighted by ``w_k`` (``"weighted"``), as in :func:`manytask.backward`; the paper's per-task SAM
on the heads is not applied. The shared parameters are restored bit for bit after each
perturbation (their values are saved and copied back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from .backward import BackwardResult, HeadGrad, NonFiniteLossError, _apply_update, _result
from .balancers.base import Balancer
from .balancers.blas import one_blas_thread
from .balancers.registry import check_number
from .gradients import Features, feature_tensors, task_gradients

LossClosure = Callable[[], tuple[Mapping[str, Tensor], Features]]


def flat_backward(
    compute_losses: LossClosure,
    method: Balancer,
    shared_params: Iterable[Tensor],
    *,
    rho: float = 0.05,
    head_grad: HeadGrad = "own",
) -> BackwardResult:
    """One training step's gradients with task-based flat regions (see the module docstring).

    Args:
        compute_losses: re-runs the forward on the current batch and returns
            ``({task: scalar loss}, features)`` (features as for :func:`manytask.backward`).
            Called 1 + K times; it must be deterministic (put dropout in eval or fix its seed).
        method: a Gramian-based balancer (``requires = "gramian"``, not a loss weighting).
        shared_params: the shared part's parameters (perturbed, then restored).
        rho: the radius of the SAM ball, ``>= 0``.
        head_grad: ``"own"`` or ``"weighted"``, as in :func:`manytask.backward`.

    Fills ``.grad`` (adding to what is there) and returns the weights ``w`` of the loss part.
    """
    check_number("flat_backward", "rho", rho, low=0.0)
    check_flat_method(method, "flat_backward")
    params = [p for p in shared_params if p.requires_grad]
    if not params:
        raise ValueError("flat_backward: shared_params holds no parameter that requires grad")
    losses, features = compute_losses()
    tasks, stacked = _check_losses(losses)
    if not method.task_names:
        method.setup(tasks)
    feats = feature_tensors(features)
    grads = task_gradients(list(stacked), feats, mode="exact", shared_params=params)
    J = grads.jacobian_matrix()  # K x D at theta
    flat_part = torch.zeros_like(J)
    saved = [p.detach().clone() for p in params]
    norms = J.norm(dim=1)
    for k, task in enumerate(tasks):
        if rho == 0 and k > 0:  # the perturbation is zero: one pass checks the machinery
            flat_part[k] = flat_part[0]
            continue
        step = J[k] * (rho / norms[k]) if float(norms[k]) > 0 else torch.zeros_like(J[k])
        try:
            # Through .data: the first forward's graph (kept for the final backward) saved these
            # tensors; they are restored bit for bit before it is used, so bypassing autograd's
            # version check is safe here.
            with torch.no_grad():
                for p, piece in zip(params, step.split([p.numel() for p in params]), strict=True):
                    p.data.add_(piece.view_as(p).to(p.dtype))
            perturbed, _ = compute_losses()
            if task not in perturbed:
                raise ValueError(f"compute_losses() no longer returns task {task!r}")
            g = torch.autograd.grad(perturbed[task], params, allow_unused=True)
            flat_part[k] = (
                torch.cat(
                    [
                        (gi if gi is not None else torch.zeros_like(p)).reshape(-1).to(J.dtype)
                        for gi, p in zip(g, params, strict=True)
                    ]
                )
                - J[k]
            )
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.data.copy_(value)
    with one_blas_thread():
        w = method.decide(stacked, tasks, grads.gramian).weights
    update = w.to(J.dtype) @ J
    if bool(flat_part.any()):
        gram_h = (flat_part @ flat_part.T).double()
        with one_blas_thread():
            v = method.decide(stacked, tasks, gram_h).weights
        update = update + v.to(J.dtype) @ flat_part
    _apply_update(params, update, stacked, w, head_grad)
    return _result(tasks, w, stacked, grads.gramian)


def check_flat_method(method: Balancer, owner: str) -> None:
    """Flat regions combine task gradients twice: ``method`` must be a Gramian-based method
    that combines them (not a loss weighting, not GradNorm-style head weighting)."""
    if type(method).requires != "gramian" or method.applies_to_heads:
        raise ValueError(
            f"{owner} needs a gradient-level method combining task gradients, got "
            f"{method.name!r}"
        )


def _check_losses(losses: Mapping[str, Tensor]) -> tuple[tuple[str, ...], Tensor]:
    if not losses:
        raise ValueError("flat_backward: compute_losses() returned no task loss")
    tasks = tuple(losses)
    for task in tasks:
        value = losses[task]
        if value.dim() != 0 or not value.requires_grad:
            raise ValueError(f"flat_backward: loss of task {task!r} must be a scalar with grad")
    stacked = torch.stack([losses[t] for t in tasks])
    finite = torch.isfinite(stacked.detach())
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(tasks[bad], float(stacked[bad].detach()))
    return tasks, stacked
