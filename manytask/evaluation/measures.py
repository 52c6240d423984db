"""Multi-task measures: the gain Δm over single-task baselines, mean rank, Pareto fronts.

Results are nested mappings ``{task: {metric: value}}``; each metric's direction (higher or
lower is better) comes from the :class:`~manytask.Task` objects or an explicit mapping.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from ..tasks import Task

Results = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, Mapping[str, bool]]  # {task: {metric: higher_is_better}}


def directions_of(tasks: Sequence[Task]) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` for the tasks' metrics (the loss: lower)."""
    out = {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in tasks}
    for t in out.values():
        t.setdefault("loss", False)
    return out


def delta_m(
    results: Results,
    baseline: Results,
    directions: Directions,
    *,
    metrics: Mapping[str, Sequence[str]] | None = None,
    average: Literal["tasks", "metrics"] = "tasks",
    near_zero: float = 0.05,
) -> float:
    """The multi-task gain Δm, in percent (positive: better than the baselines).

    Δm = mean over (task, metric) of ``(-1)^{l} (M - M_b) / M_b * 100`` with ``l = 1`` when
    lower is better (Maninis et al., CVPR 2019; the form used by LibMTL and the Nash-MTL and
    FAMO papers). ``average="tasks"`` (LibMTL) first averages each task's metrics, then the
    tasks; ``average="metrics"`` (Nash-MTL, FAMO) averages over all metrics at once. Which
    metrics count is given by ``metrics`` (default: every metric present in both, except the
    loss). A zero baseline value is an error (the relative change is undefined); a baseline
    with ``|M_b| < near_zero`` (an MCC, R² or correlation near 0) gives a warning, since its
    relative change can dominate the mean.
    """
    if average not in ("tasks", "metrics"):
        raise ValueError(f"average must be 'tasks' or 'metrics', got {average!r}")
    per_task: list[list[float]] = []
    for task, base in baseline.items():
        if task not in results:
            raise KeyError(f"delta_m: no result for task {task!r}")
        names = (
            list(metrics[task])
            if metrics and task in metrics
            else [m for m in base if m != "loss" and m in results[task]]
        )
        changes = []
        for name in names:
            if name not in directions.get(task, {}):
                raise KeyError(f"delta_m: no direction for metric {task}/{name}")
            b, m = float(base[name]), float(results[task][name])
            if b == 0:
                raise ValueError(f"delta_m: baseline {task}/{name} is 0; relative change undefined")
            sign = 1.0 if directions[task][name] else -1.0
            change = sign * (m - b) / abs(b) * 100.0
            if abs(b) < near_zero:
                warnings.warn(
                    f"delta_m: baseline {task}/{name} = {b:.3g} is near zero; its relative "
                    f"change ({change:+.0f} %) can dominate Δm", stacklevel=2)
            changes.append(change)
        if changes:
            per_task.append(changes)
    if not per_task:
        raise ValueError("delta_m: no metric in common between results and baseline")
    if average == "tasks":
        return float(np.mean([np.mean(c) for c in per_task]))
    return float(np.mean([v for c in per_task for v in c]))


def mean_rank(scores: Mapping[str, Results], directions: Directions) -> dict[str, float]:
    """Each method's rank (1 = best) on every task metric, averaged; ties share the mean rank."""
    methods = list(scores)
    if not methods:
        return {}
    columns = [
        (task, metric)
        for task, metrics in directions.items()
        for metric in metrics
        if metric != "loss" and all(metric in scores[m].get(task, {}) for m in methods)
    ]
    if not columns:
        raise ValueError("mean_rank: no metric reported by every method")
    ranks = np.zeros((len(methods), len(columns)))
    for c, (task, metric) in enumerate(columns):
        values = np.array([scores[m][task][metric] for m in methods], dtype=float)
        key = -values if directions[task][metric] else values  # smaller key = better
        for i in range(len(methods)):
            better = np.sum(key < key[i])
            ties = np.sum(key == key[i])
            ranks[i, c] = better + (ties + 1) / 2
    return {m: float(ranks[i].mean()) for i, m in enumerate(methods)}


def pareto_front(
    points: np.ndarray | Sequence[Sequence[float]], higher_is_better: Sequence[bool]
) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n methods x d objectives).

    A point is dominated when another is at least as good on every objective and strictly
    better on one. Duplicated points are all kept.
    """
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(higher_is_better):
        raise ValueError(
            f"pareto_front: points must be (n, {len(higher_is_better)}), got shape {p.shape}"
        )
    signs = np.where(np.asarray(higher_is_better), 1.0, -1.0)
    q = p * signs  # now higher is better everywhere
    geq = (q[:, None, :] >= q[None, :, :]).all(-1)  # geq[j, i]: j at least as good as i
    gt = (q[:, None, :] > q[None, :, :]).any(-1)
    dominated = (geq & gt).any(axis=0)
    return np.logical_not(dominated)
