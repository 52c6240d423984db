"""The two-objective toy problem of the CAGrad and Nash-MTL papers, with trajectories.

Two objectives of two parameters ``x = (x1, x2)`` (Liu et al., NeurIPS 2021, Section 5.1 and
Figure 1; reused by Navon et al., ICML 2022, Figure 1): in the upper half plane each objective
is the log of a distance to a curve, in the lower half plane a wide quadratic bowl, blended
through ``c1 = max(tanh(x2/2), 0)`` and ``c2 = max(tanh(-x2/2), 0)``:

    f1 = c1 * (log max(|0.5(-x1 - 7) - tanh(-x2)|, 5e-6) + 6)
         + c2 * (((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20)
    f2 = c1 * (log max(|0.5(-x1 + 3) + tanh(-x2) + 2|, 5e-6) + 6)
         + c2 * (((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20)

Each method turns the two gradients into one update (through its :meth:`decide` on their
2 x 2 Gramian, exactly as in training), and Adam follows it from the papers' five starting
points. The Pareto front is found numerically on a dense grid. A method "reaches the front"
when its final point lies within a tolerance of the front in objective space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..balancers import GramianLossWeighting, GramianWeighting, LossWeighting, make_balancer
from .measures import pareto_front

STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (-8.5, -5.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)
_LOWER = 5e-6


def toy_objectives(x: Tensor) -> Tensor:
    """The two objectives at each row of ``x`` (n, 2); returns (n, 2)."""
    x1, x2 = x[:, 0], x[:, 1]
    c1 = torch.clamp(torch.tanh(0.5 * x2), min=0)
    c2 = torch.clamp(torch.tanh(-0.5 * x2), min=0)
    log1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=_LOWER).log() + 6
    log2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=_LOWER).log() + 6
    sq1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    sq2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return torch.stack([c1 * log1 + c2 * sq1, c1 * log2 + c2 * sq2], dim=1)


def front(resolution: int = 600, box: float = 10.0) -> np.ndarray:
    """Objective values (m, 2) of the non-dominated points of a dense grid over the box."""
    axis = torch.linspace(-box, box, resolution, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    values = toy_objectives(grid).numpy()
    mask = np.zeros(len(values), dtype=bool)
    # Only points that no lexicographically earlier point dominates can be on the front:
    # sort by f1 and keep the running minimum of f2 (cheap exact 2-D Pareto filter).
    order = np.lexsort((values[:, 1], values[:, 0]))
    best = np.inf
    for i in order:
        if values[i, 1] < best:
            mask[i] = True
            best = values[i, 1]
    candidates = values[mask]
    return candidates[pareto_front(candidates, [False, False])]


@dataclass
class Trajectory:
    method: str
    start: tuple[float, float]
    path: np.ndarray  # (steps + 1, 2) parameters
    losses: np.ndarray  # (steps + 1, 2) objectives

    def distance_to(self, pareto: np.ndarray) -> float:
        """Distance in objective space from the final point to the nearest front point."""
        return float(np.min(np.linalg.norm(pareto - self.losses[-1], axis=1)))


def run(
    method: str,
    *,
    starts: Sequence[tuple[float, float]] = STARTS,
    steps: int = 20_000,
    lr: float = 2e-3,
    record_every: int = 20,
    params: dict[str, Any] | None = None,
) -> list[Trajectory]:
    """Follow ``method`` (with ``params``) with Adam from each start (all starts together)."""
    x = torch.tensor(starts, dtype=torch.float64, requires_grad=True)
    balancers = [make_balancer(method, **(params or {})) for _ in starts]
    for b in balancers:
        b.setup(["f1", "f2"])
    optimizer = torch.optim.Adam([x], lr=lr)
    paths, losses = [], []
    for step in range(steps + 1):
        values = toy_objectives(x)
        if step % record_every == 0 or step == steps:
            paths.append(x.detach().clone().numpy())
            losses.append(values.detach().clone().numpy())
        if step == steps:
            break
        g1 = torch.autograd.grad(values[:, 0].sum(), x, retain_graph=True)[0]
        g2 = torch.autograd.grad(values[:, 1].sum(), x)[0]
        grads = torch.stack([g1, g2], dim=1)  # (n, 2 tasks, 2 params)
        gramians = grads @ grads.transpose(1, 2)
        update = torch.empty_like(x)
        for i, balancer in enumerate(balancers):
            loss_i = values[i].detach()
            if isinstance(balancer, GramianWeighting | GramianLossWeighting):
                w = balancer.decide(loss_i, ("f1", "f2"), gramians[i]).weights
            elif isinstance(balancer, LossWeighting):
                w = balancer.decide(loss_i, ("f1", "f2")).weights
            else:
                raise ValueError(f"toy: {balancer.name} needs the Jacobian, not a Gramian")
            update[i] = w.to(grads.dtype) @ grads[i]
        x.grad = update
        optimizer.step()
    path, loss = np.stack(paths, axis=1), np.stack(losses, axis=1)
    return [Trajectory(method, (s[0], s[1]), path[i], loss[i]) for i, s in enumerate(starts)]


def plot(trajectories: dict[str, list[Trajectory]], out: Path, pareto: np.ndarray) -> Path:
    """One panel per method: objective-space trajectories over the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(trajectories)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(STARTS)))
    for ax, (method, trajs) in zip(axes.flat, trajectories.items(), strict=False):
        ax.plot(pareto[:, 0], pareto[:, 1], color="black", lw=3, alpha=0.35, label="Pareto front")
        for color, t in zip(colors, trajs, strict=False):
            ax.plot(t.losses[:, 0], t.losses[:, 1], color=color, lw=1.2)
            ax.scatter(*t.losses[0], color=color, marker="o", s=18)
            ax.scatter(*t.losses[-1], color=color, marker="*", s=70, edgecolor="black", lw=0.5)
        ax.set_title(method)
        ax.set_xlabel("f1")
        ax.set_ylabel("f2")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle("toy problem (CAGrad / Nash-MTL): o start, * end after Adam", fontsize=10)
    fig.tight_layout()
    path = out / "toy_trajectories.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
