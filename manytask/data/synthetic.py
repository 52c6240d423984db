"""The synthetic two-task regression data of the MMoE paper, with a controlled task correlation.

Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018, Section 3.2 (synthetic data generation):

1. draw two orthogonal unit vectors ``u_1, u_2`` in ``R^d``;
2. for a scale ``c`` and a correlation score ``-1 <= p <= 1`` set ``w_1 = c u_1`` and
   ``w_2 = c (p u_1 + sqrt(1 - p^2) u_2)``, so that ``cos(w_1, w_2) = p``;
3. draw inputs ``x ~ N(0, I_d)``;
4. label ``y_i = w_i^T x + sum_{j=1}^m sin(alpha_j w_i^T x + beta_j) + eps_i`` with
   ``eps_i ~ N(0, 0.01)`` (variance 0.01: ``noise_std = 0.1``).

The paper leaves ``alpha_j, beta_j`` unspecified; we draw them once per data set from
``N(0, 1)`` (with the data set's seed), shared by both tasks as the paper's formula requires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..tasks import Task
from .tabular import TabularDataset


@dataclass
class MMoESynthetic:
    """Inputs ``x (n, d)``, targets ``{"y1", "y2"}`` of shape ``(n, 1)`` and the generating
    parameters."""

    x: Tensor
    y1: Tensor
    y2: Tensor
    w1: Tensor
    w2: Tensor
    alphas: Tensor
    betas: Tensor
    correlation: float

    @property
    def tasks(self) -> tuple[Task, Task]:
        return Task.regression("y1"), Task.regression("y2")

    def dataset(self) -> TabularDataset:
        """As a dense-only :class:`TabularDataset` (split it with ``.split``)."""
        return TabularDataset(None, self.x, {"y1": self.y1, "y2": self.y2})


def mmoe_synthetic(
    n_samples: int,
    correlation: float,
    *,
    dim: int = 100,
    c: float = 1.0,
    m: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
) -> MMoESynthetic:
    """``n_samples`` rows of the MMoE synthetic data with ``cos(w_1, w_2) = correlation``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"mmoe_synthetic: n_samples must be a positive integer, got {n_samples!r}")
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"mmoe_synthetic: correlation must lie in [-1, 1], got {correlation!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ValueError(f"mmoe_synthetic: dim must be an integer >= 2, got {dim!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"mmoe_synthetic: m must be a non-negative integer, got {m!r}")
    if not c > 0 or not noise_std >= 0:
        raise ValueError(
            f"mmoe_synthetic: need c > 0 and noise_std >= 0, got c={c!r}, noise_std={noise_std!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    # Orthonormal columns of a Gaussian matrix (QR) give two orthogonal unit vectors.
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=gen, dtype=torch.float64))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = c * u1
    w2 = c * (correlation * u1 + math.sqrt(max(0.0, 1.0 - correlation**2)) * u2)
    alphas = torch.randn(m, generator=gen, dtype=torch.float64)
    betas = torch.randn(m, generator=gen, dtype=torch.float64)
    x = torch.randn(n_samples, dim, generator=gen, dtype=torch.float64)

    def label(w: Tensor) -> Tensor:
        z = x @ w  # (n,)
        wave = torch.sin(z[:, None] * alphas + betas).sum(1)
        return z + wave + noise_std * torch.randn(n_samples, generator=gen, dtype=torch.float64)

    return MMoESynthetic(
        x=x.float(),
        y1=label(w1).float()[:, None],
        y2=label(w2).float()[:, None],
        w1=w1,
        w2=w2,
        alphas=alphas,
        betas=betas,
        correlation=float(correlation),
    )
