"""FW-Merging: Frank-Wolfe over the convex hull of a pool of fine-tuned checkpoints.

Chen et al., 2025, "FW-Merging: Scaling Model Merging with Frank-Wolfe Optimization": merging
is the constrained problem ``min_{theta in C} f(theta)`` where the feasible set ``C`` is
spanned by the candidate checkpoints and ``f`` measures the desired behaviour on a little data.
With ``tau_1..tau_N`` the pool's task vectors and ``C = {theta_0 + scale * sum_i a_i tau_i :
a in simplex}``, each Frank-Wolfe iteration

1. linearises ``f`` at the current model: ``g = grad f(theta_t)`` (relevance evaluation),
2. asks the linear minimisation oracle for the vertex most aligned with ``-g``:
   ``i* = argmin_i <g, scale * tau_i>`` (model selection),
3. steps towards it: ``a <- (1 - gamma_t) a + gamma_t e_{i*}``, ``gamma_t = 2 / (t + 2)``
   (knowledge integration; the classical step size, so ``gamma_0 = 1`` and the first iterate
   is a vertex).

The iterate therefore always lies in ``C`` (its weights ``a`` stay on the simplex), irrelevant
candidates are chosen only when their task vector lowers ``f``, and memory is one gradient
plus the pool's inner products: constant in the number of candidates beyond reading each once.

The linear minimisation oracle over the hull is exactly the smallest inner product above
(``selection="inner"``, the default). ``selection="cosine"`` instead ranks candidates by the
sum over tensors of the cosine between the gradient and the candidate's task vector, as the
authors' code does. Their "hard" variant also adds ``gamma_t tau_{i*}`` to the running model
(task-arithmetic steps) rather than taking the convex combination, so its iterate can leave the
hull; we keep the paper's constrained formulation.

Convention (ours): ``f`` is the sum over the given tasks of the cross-entropy of ``(x, y)``
batches through that task's head (``objective="supervised"``) or of the prediction entropy of
inputs (``"entropy"``); one batch per task and iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BatchCycle
from .taskvectors import TaskVectors, task_objective


@dataclass
class FWResult:
    state_dict: dict[str, Tensor]
    weights: Tensor          # (N,) on the simplex: the merged model's place in the hull
    chosen: list[int]        # the vertex each iteration's oracle chose
    objective: list[float]   # f at each iterate, before its step


def fw_merging(
    encoder: nn.Module,
    pool: Sequence[Mapping[str, Tensor]],
    heads: Sequence[nn.Module],
    loaders: Sequence[Iterable[Any]],
    *,
    iterations: int = 10,
    scale: float = 1.0,
    objective: str = "supervised",
    selection: str = "inner",
) -> FWResult:
    """Merge ``pool`` (fine-tuned state dicts of ``encoder``) by Frank-Wolfe (module docs).

    ``heads[t]``/``loaders[t]`` describe the tasks the merged model should serve; the pool may
    hold more (or other) checkpoints than there are tasks.
    """
    if len(heads) != len(loaders) or not heads:
        raise ValueError(f"fw_merging: needs one loader per head; got {len(heads)} heads, "
                         f"{len(loaders)} loaders")
    if objective not in ("supervised", "entropy"):
        raise ValueError(f"fw_merging: objective must be 'supervised' or 'entropy', "
                         f"got {objective!r}")
    if selection not in ("inner", "cosine"):
        raise ValueError(f"fw_merging: selection must be 'inner' or 'cosine', got {selection!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"fw_merging: iterations must be a positive integer, got {iterations!r}")
    if not scale > 0:
        raise ValueError(f"fw_merging: scale must be > 0, got {scale!r}")
    vectors = TaskVectors(encoder, pool, "fw_merging")
    weights = torch.zeros(vectors.k, dtype=vectors.base.dtype)
    cycles = [BatchCycle(loader, f"loaders[{i}]", "fw_merging") for i, loader in enumerate(loaders)]
    chosen: list[int] = []
    trace: list[float] = []
    for t in range(iterations):
        flat = (vectors.base + scale * (weights @ vectors.taus)).requires_grad_(True)
        loss = task_objective(vectors, flat, heads, cycles, objective)
        trace.append(float(loss.detach()))
        (grad,) = torch.autograd.grad(loss, [flat])
        vertex = int(torch.argmin(_scores(vectors, grad, selection)))
        gamma = 2.0 / (t + 2.0)
        weights = (1.0 - gamma) * weights
        weights[vertex] += gamma
        chosen.append(vertex)
    final = vectors.base + scale * (weights @ vectors.taus)
    return FWResult(vectors.state_dict(final), weights, chosen, trace)


def _scores(vectors: TaskVectors, grad: Tensor, selection: str) -> Tensor:
    """Per candidate: <grad, tau_i>, or the sum over tensors of their cosine."""
    if selection == "inner":
        return vectors.taus @ grad
    scores = torch.zeros(vectors.k, dtype=grad.dtype)
    for g, taus in zip(grad.split(vectors.sizes), vectors.taus.split(vectors.sizes, dim=1),
                       strict=True):
        norms = taus.norm(dim=1) * g.norm()
        scores += torch.where(norms > 0, (taus @ g) / norms.clamp_min(1e-300), 0.0)
    return scores
