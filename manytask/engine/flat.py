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

It needs extra forward passes (one per task, at each perturbed point), so it is a part of the
pipeline of :func:`manytask.backward` holding a closure that re-runs the forward,
:class:`FlatRegions`: the engine computes ``g_k`` and ``w`` as for the plain method, and the
part adds ``sum_k v_k h_k`` to the shared update. :func:`flat_backward` runs the first forward
and that pipeline. Cost: 1 + K forwards and about 1 + K backwards, plus two decisions of the
method (a stateful method therefore advances its state twice per step). Exact mode only: the
perturbation lives in parameter space. One process only.

Heads get the gradient of their own loss at the unperturbed point (``head_grad="own"``) or
weighted by ``w_k`` (``"weighted"``), as in :func:`manytask.backward`; the paper's per-task SAM
on the heads is not applied. The shared parameters are restored bit for bit after each
perturbation (their values are saved and copied back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, cast

import torch
from torch import Tensor

from ..balancers.base import Balancer, GramianWeighting
from ..balancers.registry import check_number
from .apply import HeadGrad
from .backward import BackwardResult, backward
from .blas import one_blas_thread
from .gradients import Features
from .parts import Part, StepView

LossClosure = Callable[[], tuple[Mapping[str, Tensor], Features]]


class FlatRegions(Part):
    """The flatness part ``sum_k v_k h_k``, ``v = method(H)`` (see the module docstring)."""

    adds_update: ClassVar[bool] = True

    def __init__(self, compute_losses: LossClosure, rho: float = 0.05) -> None:
        check_number("flat_backward", "rho", rho, low=0.0)
        self.compute_losses = compute_losses
        self.rho = rho

    def shared_update(self, view: StepView) -> Tensor:
        check_flat_method(view.method, "flat regions")
        J, params, rho = view.jacobian, view.params, self.rho
        flat_part = torch.zeros_like(J)
        saved = [p.detach().clone() for p in params]
        norms = J.norm(dim=1)
        for k, task in enumerate(view.tasks):
            if rho == 0 and k > 0:  # the perturbation is zero: one pass checks the machinery
                flat_part[k] = flat_part[0]
                continue
            step = J[k] * (rho / norms[k]) if float(norms[k]) > 0 else torch.zeros_like(J[k])
            try:
                # Through .data: the first forward's graph (kept for the final backward) saved
                # these tensors; they are restored bit for bit before it is used, so bypassing
                # autograd's version check is safe here.
                with torch.no_grad():
                    for p, piece in zip(params, step.split([p.numel() for p in params]),
                                        strict=True):
                        p.data.add_(piece.view_as(p).to(p.dtype))
                perturbed, _ = self.compute_losses()
                if task not in perturbed:
                    raise ValueError(f"compute_losses() no longer returns task {task!r}")
                g = torch.autograd.grad(perturbed[task], params, allow_unused=True)
                flat_part[k] = (
                    torch.cat(
                        [
                            (gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                            .to(J.dtype)
                            for gi, p in zip(g, params, strict=True)
                        ]
                    )
                    - J[k]
                )
            finally:
                with torch.no_grad():
                    for p, value in zip(params, saved, strict=True):
                        p.data.copy_(value)
        if not bool(flat_part.any()):
            return torch.zeros(J.shape[1], dtype=J.dtype, device=J.device)
        gram_h = (flat_part @ flat_part.T).double()
        with one_blas_thread():
            v = cast(GramianWeighting, view.method).decide(view.losses, view.tasks, gram_h).weights
        return v.to(J.dtype) @ flat_part


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
        method: a Gramian weighting (not a loss weighting).
        shared_params: the shared part's parameters (perturbed, then restored).
        rho: the radius of the SAM ball, ``>= 0``.
        head_grad: ``"own"`` or ``"weighted"``, as in :func:`manytask.backward`.

    Fills ``.grad`` (adding to what is there) and returns the weights ``w`` of the loss part.
    """
    part = FlatRegions(compute_losses, rho)
    check_flat_method(method, "flat_backward")
    params = [p for p in shared_params if p.requires_grad]
    if not params:
        raise ValueError("flat_backward: shared_params holds no parameter that requires grad")
    losses, features = compute_losses()
    if not losses:
        raise ValueError("flat_backward: compute_losses() returned no task loss")
    return backward(losses, method, features=features, shared_params=params, mode="exact",
                    head_grad=head_grad, parts=[part])


def check_flat_method(method: Balancer, owner: str) -> None:
    """Flat regions combine task gradients twice: ``method`` must be a Gramian weighting
    (not a loss weighting, not a Gramian-driven loss weighting, not a schedule)."""
    if not isinstance(method, GramianWeighting) or method.schedule is not None:
        raise ValueError(
            f"{owner} needs a gradient-level method combining task gradients, got "
            f"{method.name!r}"
        )
