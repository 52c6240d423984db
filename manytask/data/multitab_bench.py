"""MultiTab-Bench: synthetic multitask tabular data with tunable task count, correlation and
complexity.

Sinodinos, Wei and Armanfard, "MultiTab: A Scalable Foundation for Multitask Learning on
Tabular Data", AAAI 2026 (arXiv:2511.09970), Section "MultiTab-Bench". It generalises the
two-task generator of the MMoE paper (:mod:`manytask.data.synthetic`) to ``T`` tasks:

1. draw ``T`` orthonormal vectors ``U (T, D)`` (``T <= D``);
2. the task Gram matrix ``P = (1 - p) I + p 1 1^T`` (every pair of tasks has cosine ``p``),
   positive semi-definite for ``-1/(T-1) <= p <= 1``; with ``P = Q diag(lambda) Q^T``, the task
   weights are ``W = Q diag(sqrt(lambda)) U``, so ``W W^T = P``: unit vectors, pairwise cosine
   exactly ``p``;
3. inputs ``x ~ N(0, I_D)``; task ``i``'s latent score ``z_i = w_i^T x`` is standard normal and
   ``corr(z_i, z_j) = p`` -- this is the *task correlation* that is asked for and checked;
4. label ``y_i = sum_{k=1}^{c_i} z_i^k + eps_i``, ``eps_i ~ N(0, sigma_i^2)``: the polynomial
   degree ``c_i`` is task ``i``'s *complexity* (one value for all tasks, or one per task for
   the paper's relative-complexity experiments).

With ``standardize=True`` (default) each label is shifted and scaled by the *population* mean
and standard deviation of ``sum_k z^k`` (Gaussian moments ``E z^m = (m-1)!!`` for even ``m``,
0 for odd): an affine map per task, so correlations are untouched and tasks of high degree do
not dominate a summed loss. The label correlation then follows from ``p`` and the degrees;
for example ``p / (1 + sigma^2)`` at degree 1 and ``(p + 2 p^2) / (3 + sigma^2)`` at degree 2
(both tasks alike, unstandardised noise ``sigma``). ``task_type="binary"`` thresholds each
label at its population mean after standardisation (at 0).

Defaults: degree 2 and noise ``0.01`` (those of a public implementation of this generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..tasks import Task
from .tabular import TabularDataset


def _gaussian_moment(m: int) -> float:
    """``E[z^m]`` for ``z ~ N(0, 1)``: ``(m - 1)!!`` for even ``m``, 0 for odd ``m``."""
    if m % 2:
        return 0.0
    out = 1.0
    for k in range(m - 1, 0, -2):
        out *= k
    return out


def polynomial_moments(degree: int) -> tuple[float, float]:
    """Population mean and standard deviation of ``sum_{k=1}^{degree} z^k``, ``z ~ N(0, 1)``."""
    mean = sum(_gaussian_moment(k) for k in range(1, degree + 1))
    second = sum(
        _gaussian_moment(j + k) for j in range(1, degree + 1) for k in range(1, degree + 1)
    )
    return mean, (second - mean**2) ** 0.5


@dataclass
class MultiTabBench:
    """One draw of MultiTab-Bench: inputs, targets and the generating parameters."""

    x: Tensor  # (n, D)
    targets: dict[str, Tensor]  # {"task{i}": (n, 1) float (regression) or (n,) 0/1 (binary)}
    weights: Tensor  # W (T, D), W W^T = P
    latent: Tensor  # z = x W^T (n, T)
    degrees: tuple[int, ...]
    correlation: float
    task_type: str

    @property
    def tasks(self) -> tuple[Task, ...]:
        make = Task.binary if self.task_type == "binary" else Task.regression
        return tuple(make(name) for name in self.targets)

    @property
    def achieved_correlation(self) -> Tensor:
        """Empirical ``T x T`` correlation of the latent task scores ``z`` in this sample."""
        return torch.corrcoef(self.latent.T)

    def dataset(self) -> TabularDataset:
        """All rows as a dense-only :class:`TabularDataset`."""
        return TabularDataset(None, self.x, self.targets)

    def splits(
        self, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
    ) -> dict[str, TabularDataset]:
        """``{"train", "val", "test"}`` (three fractions) split at random with ``seed``."""
        if len(fractions) != 3:
            raise ValueError(f"MultiTabBench.splits: need 3 fractions, got {list(fractions)}")
        parts = self.dataset().split(fractions, seed=seed)
        return dict(zip(("train", "val", "test"), parts, strict=True))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"multitab_bench: {name} must be an integer >= {low}, got {value!r}")
    return value


def _per_task(name: str, value: object, n_tasks: int) -> list[object]:
    if isinstance(value, (list, tuple)):
        if len(value) != n_tasks:
            raise ValueError(
                f"multitab_bench: {name} needs one value per task ({n_tasks}), got {list(value)}"
            )
        return list(value)
    return [value] * n_tasks


def multitab_bench(
    n_samples: int,
    n_tasks: int = 3,
    correlation: float = 0.5,
    *,
    n_features: int = 32,
    complexity: int | Sequence[int] = 2,
    noise_std: float | Sequence[float] = 0.01,
    task_type: Literal["regression", "binary"] = "regression",
    standardize: bool = True,
    seed: int = 0,
) -> MultiTabBench:
    """Draw ``n_samples`` rows of ``n_tasks`` tasks with pairwise latent correlation
    ``correlation`` and polynomial degree(s) ``complexity`` (see the module docstring)."""
    _check_int("n_samples", n_samples, 1)
    _check_int("n_tasks", n_tasks, 1)
    _check_int("n_features", n_features, 1)
    if n_tasks > n_features:
        raise ValueError(
            f"multitab_bench: n_tasks={n_tasks} orthonormal directions need n_features >= "
            f"n_tasks, got n_features={n_features}"
        )
    low = -1.0 / (n_tasks - 1) if n_tasks > 1 else -1.0
    if not low - 1e-12 <= correlation <= 1.0:
        raise ValueError(
            f"multitab_bench: correlation must lie in [{low:.4g}, 1] for {n_tasks} tasks "
            f"(the task Gram matrix must be positive semi-definite), got {correlation!r}"
        )
    degrees = [_check_int("complexity", c, 1) for c in _per_task("complexity", complexity, n_tasks)]
    noises = [float(s) for s in _per_task("noise_std", noise_std, n_tasks)]  # type: ignore[arg-type]
    if any(not s >= 0 for s in noises):
        raise ValueError(f"multitab_bench: noise_std must be >= 0, got {noises}")
    if task_type not in ("regression", "binary"):
        raise ValueError(
            f"multitab_bench: task_type must be 'regression' or 'binary', got {task_type!r}"
        )

    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_features, n_tasks, generator=gen, dtype=torch.float64))
    u = q.T  # (T, D), orthonormal rows
    gram = torch.full((n_tasks, n_tasks), float(correlation), dtype=torch.float64)
    gram.fill_diagonal_(1.0)
    eigvals, eigvecs = torch.linalg.eigh(gram)
    weights = eigvecs @ torch.diag(eigvals.clamp(min=0.0).sqrt()) @ u
    x = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    latent = x @ weights.T
    targets: dict[str, Tensor] = {}
    for i, (deg, sigma) in enumerate(zip(degrees, noises, strict=True)):
        z = latent[:, i]
        y = sum(z**k for k in range(1, deg + 1)) + sigma * torch.randn(
            n_samples, generator=gen, dtype=torch.float64
        )
        if standardize or task_type == "binary":
            mean, std = polynomial_moments(deg)
            y = (y - mean) / std
        if task_type == "binary":
            targets[f"task{i}"] = (y > 0).float()
        else:
            targets[f"task{i}"] = y.float().unsqueeze(1)
    return MultiTabBench(
        x=x.float(),
        targets=targets,
        weights=weights.float(),
        latent=latent.float(),
        degrees=tuple(degrees),
        correlation=float(correlation),
        task_type=task_type,
    )
