"""The property suite's plumbing: build any registered balancer, run one decision on a given
Jacobian whatever the method's kind, and input sets like torchjd's aggregator tests (our own
generators, after the input families of its test suite)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from manytask.balancers import (
    Balancer,
    GramianLossWeighting,
    GramianWeighting,
    JacobianAggregator,
    LossWeighting,
    Periodic,
    available,
    make_balancer,
)
from manytask.engine.gradients import gramian_of

METHODS = available()  # every registered balancer gets the suite by registering


@dataclass
class Step:
    weights: Tensor  # one per present task, float64
    update: Tensor  # the shared update over J's columns, float64
    seconds: float


def build(name: str, tasks: Sequence[str]) -> Balancer:
    balancer = make_balancer(name)
    balancer.setup(tasks)
    return balancer


def step(balancer: Balancer, tasks: Sequence[str], J: Tensor, losses: Tensor) -> Step:
    """One decision on the Jacobian ``J`` (rows: ``tasks``), as the engine would ask for it."""
    losses = losses.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    if isinstance(balancer, JacobianAggregator):
        decision = balancer.decide(losses, tasks, J)
    elif isinstance(balancer, GramianWeighting | GramianLossWeighting | Periodic):
        decision = balancer.decide(losses, tasks, gramian_of([J]))
    else:
        decision = cast(LossWeighting, balancer).decide(losses, tasks)
    seconds = time.perf_counter() - start
    weights = decision.weights.detach().double().cpu()
    if decision.update is not None:
        update = decision.update.detach().double().cpu()
    else:
        update = weights @ J.double()
    return Step(weights, update, seconds)


def run(name: str, tasks: Sequence[str], inputs: Sequence[tuple[Tensor, Tensor]],
        seed: int = 0, present: Sequence[str] | None = None) -> list[Step]:
    """A fresh balancer set up with ``tasks``, stepped on each (J, losses) under ``seed``."""
    torch.manual_seed(seed)
    balancer = build(name, tasks)
    return [step(balancer, present or tasks, J, losses) for J, losses in inputs]


def sequence(k: int, d: int, n: int = 3, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` steps of random float64 Jacobians and distinct positive losses."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(k, d, generator=gen, dtype=torch.float64),
         torch.rand(k, generator=gen, dtype=torch.float64) + 0.5 + 0.1 * torch.arange(k))
        for _ in range(n)
    ]


@functools.cache
def is_stochastic(name: str) -> bool:
    """Whether ``name`` draws random numbers: some seed changes its decisions on an input
    with many conflicting pairs (more tasks than dimensions)."""
    inputs = sequence(6, 3)
    a = run(name, "abcdef", inputs, seed=0)
    for seed in (1, 2, 3):
        b = run(name, "abcdef", inputs, seed=seed)
        if any(not torch.equal(x.weights, y.weights) or not torch.equal(x.update, y.update)
               for x, y in zip(a, b, strict=True)):
            return True
    return False


# ------------------------------------------------------------------ torchjd-like input families
def _orthonormal(n: int, gen: torch.Generator, against: Tensor | None = None) -> Tensor:
    """A random n x (n - k) matrix with orthonormal columns orthogonal to ``against`` (n x k)."""
    k = 0 if against is None else against.shape[1]
    a = torch.randn(n, n - k, generator=gen, dtype=torch.float64)
    if against is not None:
        a = a - against @ (against.T @ a)
    return torch.linalg.qr(a)[0]


def of_rank(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    u, v = _orthonormal(m, gen), _orthonormal(n, gen)
    s = torch.randn(rank, generator=gen, dtype=torch.float64).abs()
    return (u[:, :rank] * s) @ v[:, :rank].T


def strongly_stationary(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """Rank ``rank`` with ``w^T J = 0`` for some ``w > 0``: rows orthogonal to a positive w."""
    w = torch.randn(m, 1, generator=gen, dtype=torch.float64).abs()
    w = w / w.norm()
    u, v = _orthonormal(m, gen, w), _orthonormal(n, gen)
    s = torch.randn(rank, generator=gen, dtype=torch.float64).abs()
    return (u[:, :rank] * s) @ v[:, :rank].T


def not_weakly_stationary(m: int, n: int, rank: int, gen: torch.Generator) -> Tensor:
    """No ``w >= 0, w != 0`` with ``w^T J = 0``: a positive left singular vector is kept."""
    w = torch.randn(m, 1, generator=gen, dtype=torch.float64).abs()
    w = w / w.norm()
    u = torch.cat([w, _orthonormal(m, gen, w)], dim=1)
    v = _orthonormal(n, gen)
    s = torch.randn(rank, generator=gen, dtype=torch.float64).abs() + 0.1
    return (u[:, :rank] * s) @ v[:, :rank].T


@functools.cache
def torchjd_like() -> dict[str, list[Tensor]]:
    """Float32 matrices of the families of torchjd's aggregator tests (shapes and scales too)."""
    gen = torch.Generator().manual_seed(0)
    plain = [of_rank(m, n, r, gen) for m, n, r in
             [(1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9)]]
    triples = [(5, 3, 3), (9, 11, 6), (7, 13, 2)]
    strong = [strongly_stationary(m, n, r, gen) for m, n, r in triples]
    free = [not_weakly_stationary(m, n, r, gen) for m, n, r in triples]
    zeros = [torch.zeros(m, n, dtype=torch.float64) for m, n in [(1, 1), (4, 3), (9, 11)]]
    scales = [0.0, 1e-10, 1e3, 1e5, 1e10, 1e15]
    typical = zeros + plain + strong + free
    return {
        "typical": [j.float() for j in typical],
        "scaled": [(s * j).float() for s in scales for j in plain],
        "not_strong": [j.float() for j in free],
        "plain": [j.float() for j in plain],
    }
