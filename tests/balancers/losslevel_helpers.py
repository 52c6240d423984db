"""Shared helpers for the loss-level balancer tests (imported by the test modules)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Importing the modules registers the balancers.
from manytask.balancers import dbmtl, famo, gls, imtl_l, rlw, stch  # noqa: F401
from manytask.balancers.base import Balancer, Decision
from manytask.balancers.registry import build

TASKS = ("a", "b", "c")
ALL = ("rlw", "gls", "imtl_l", "famo", "stch", "dbmtl")


def make(name: str, tasks: Sequence[str] = TASKS, **params: Any) -> Any:
    """Build balancer ``name`` (typed ``Any`` so tests can reach its state) and set it up."""
    method = build(name, params)
    method.setup(tasks)
    return method


def decide(
    method: Balancer,
    values: Sequence[float],
    tasks: Sequence[str] | None = None,
    gramian: Tensor | None = None,
) -> tuple[Decision, Tensor]:
    """One decision on leaf losses; returns it and the losses (to take gradients)."""
    names = tuple(tasks) if tasks is not None else method.task_names[: len(values)]
    losses = torch.tensor(list(values), dtype=torch.float64, requires_grad=True)
    if method.requires == "losses":
        return method.decide(losses, names), losses  # type: ignore[operator]
    if gramian is None:
        gramian = torch.eye(len(names), dtype=torch.float64)
    return method.decide(losses, names, gramian), losses  # type: ignore[operator]


def objective_of(decision: Decision, losses: Tensor) -> Tensor:
    if decision.objective is not None:
        return decision.objective
    return (decision.weights.to(losses.dtype) * losses).sum()


def grad_wrt_losses(decision: Decision, losses: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(objective_of(decision, losses), losses)
    return g


def set_scales(method: Any, values: Sequence[float] | Tensor) -> None:
    """Set IMTL-L's per-task scales ``s_k``."""
    with torch.no_grad():
        for param, value in zip(method.log_scales, torch.as_tensor(values).tolist(), strict=True):
            param.fill_(value)


def scale_grads(method: Any) -> list[float | None]:
    """IMTL-L's per-task ``ds_k`` (``None`` for a scale that got no gradient)."""
    return [None if p.grad is None else float(p.grad) for p in method.log_scales]
