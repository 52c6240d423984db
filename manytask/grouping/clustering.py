"""Clustering tasks by their feature vectors: k-means, then fuzzy memberships (STG-MTL).

STG-MTL (Sherif et al., 2023, "STG-MTL: Scalable Task Grouping for Multi-Task Learning Using
Data Map", Section 3, and its reference code) clusters the tasks' data-map vectors with
k-means and turns the centroids into soft memberships with the fuzzy c-means membership
equation (Bezdek, 1981)

    u_{t,c} = 1 / sum_{c'} (d(x_t, mu_c) / d(x_t, mu_{c'}))^{2 / (m - 1)},

with fuzziness ``m`` close to 1 (1.07 in their code), so memberships are nearly hard. Every
task joins the cluster of its largest membership; a task allowed to overlap also joins every
other cluster where its membership reaches ``threshold``. This scales to many tasks: one
k-means of K points instead of a search over groupings.

The k-means here is plain Lloyd iterations from k-means++ seeds (Arthur and Vassilvitskii,
2007), ``n_init`` restarts from one seeded generator, keeping the lowest within-cluster sum of
squares, so the result depends only on ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clustering:
    """Groups (lists of task indices), the K x C membership matrix and iterations run."""

    groups: list[list[int]]
    membership: np.ndarray
    labels: np.ndarray
    evaluated: int


def _check(x: np.ndarray, k: int, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            f"{where}: task vectors must be a 2-D array (tasks, features), got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: task vectors contain NaN or inf")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where}: the number of clusters must be a positive integer, got {k!r}")
    return x


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(labels, centroids, iterations)`` of k-means with k-means++ starts (see module)."""
    x = _check(x, k, "kmeans")
    k = min(k, len(np.unique(x, axis=0)))  # no more clusters than distinct points
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    iterations = 0
    for _ in range(n_init):
        centroids = _plus_plus(x, k, rng)
        labels = np.full(len(x), -1)
        for _ in range(max_iter):
            iterations += 1
            dist = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                if (labels == c).any():
                    centroids[c] = x[labels == c].mean(0)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels.copy(), centroids.copy())
    assert best is not None
    return best[1], best[2], iterations


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centroids], axis=0)
        total = d2.sum()
        # all points already chosen: any distinct point will do (ties are broken by index)
        probs = d2 / total if total > 0 else np.full(len(x), 1 / len(x))
        centroids.append(x[rng.choice(len(x), p=probs)])
    return np.array(centroids, dtype=np.float64)


def fuzzy_membership(x: np.ndarray, centroids: np.ndarray, m: float = 1.07) -> np.ndarray:
    """The fuzzy c-means membership of each row of ``x`` in each centroid (rows sum to 1).

    A point on a centroid belongs to it alone. ``m`` must exceed 1; as ``m -> 1`` the
    memberships become hard (1 for the nearest centroid).
    """
    if not m > 1:
        raise ValueError(f"fuzzy_membership: the fuzziness m must be > 1, got {m}")
    d = np.sqrt(((x[:, None, :] - centroids[None]) ** 2).sum(-1))
    u = np.zeros_like(d)
    on = d <= 1e-12
    exact = on.any(1)
    u[exact] = on[exact] / on[exact].sum(1, keepdims=True)
    rest = ~exact
    if rest.any():
        # work with d_min / d, in (0, 1], so that (.)^{2/(m-1)} underflows to 0 harmlessly
        ratio = d[rest].min(1, keepdims=True) / d[rest]
        power = ratio ** (2.0 / (m - 1.0))
        u[rest] = power / power.sum(1, keepdims=True)
    return u


def cluster_tasks(
    vectors: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    overlap: Sequence[int] = (),
    threshold: float = 0.2,
    m: float = 1.07,
    n_init: int = 10,
) -> Clustering:
    """Group tasks by k-means of ``vectors`` (K x D) into at most ``n_clusters`` groups.

    Each task goes to its nearest cluster; a task whose index is in ``overlap`` also joins
    every cluster where its fuzzy membership is at least ``threshold``.
    """
    x = _check(vectors, n_clusters, "cluster_tasks")
    if not 0 < threshold <= 1:
        raise ValueError(f"cluster_tasks: threshold must lie in (0, 1], got {threshold}")
    # standardise each feature so that no single wide-ranged feature decides the clusters
    scale = x.std(0)
    x = (x - x.mean(0)) / np.where(scale > 0, scale, 1.0)
    labels, centroids, iterations = kmeans(x, n_clusters, seed=seed, n_init=n_init)
    membership = fuzzy_membership(x, centroids, m)
    groups: list[list[int]] = [[] for _ in range(len(centroids))]
    for t in range(len(x)):
        for c in range(len(centroids)):
            if c == labels[t] or (t in overlap and membership[t, c] >= threshold):
                groups[c].append(t)
    return Clustering([g for g in groups if g], membership, labels, iterations)
