"""Direct pairwise transfer (train every pair and every task alone) and rank agreement.

The ground truth the cheap affinities are judged against, as in Fifty et al. (2021) and
Standley et al. (2020, "Which Tasks Should Be Learned Together in Multi-task
Learning?", ICML): for tasks ``i != j``

    T[i, j] = (s_j(trained with i) - s_j(trained alone)) / |s_j(trained alone)|,

the relative gain of target ``j`` from sharing a model with source ``i``, where ``s`` is a
score with higher = better (a lower-is-better metric enters negated). It costs K single-task
and K(K-1)/2 pair trainings per seed, so it is for small K only.

``train_fn(group, seed) -> {task: score}`` does the training; :func:`config_trainer` builds one
from a :class:`~manytask.config.TrainConfig` (the data sets ``manytask train`` knows).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ..tasks import Task
from .matrix import AffinityMatrix
from .search import Grouping

TrainFn = Callable[[tuple[str, ...], int], Mapping[str, float]]


@dataclass(frozen=True)
class PairwiseResult:
    """The transfer matrix and the scores behind it (means over seeds)."""

    transfer: AffinityMatrix
    single: dict[str, float]
    paired: dict[tuple[str, str], float]  # (source, target) -> target's score with source
    trainings: int


def _mean_scores(
    train_fn: TrainFn, group: tuple[str, ...], seeds: Sequence[int]
) -> dict[str, float]:
    runs = [train_fn(group, s) for s in seeds]
    out = {}
    for task in group:
        values = [float(r[task]) for r in runs if task in r]
        if len(values) != len(runs) or not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"pairwise transfer: training group {group} gave no finite score for task {task!r}"
            )
        out[task] = float(np.mean(values))
    return out


def pairwise_transfer(
    tasks: Sequence[str], train_fn: TrainFn, *, seeds: Sequence[int] = (0,)
) -> PairwiseResult:
    """Train every task alone and every pair, for each seed, and return the transfer matrix."""
    tasks = tuple(tasks)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ValueError(f"pairwise_transfer: need at least two distinct tasks, got {tasks}")
    if not seeds:
        raise ValueError("pairwise_transfer: need at least one seed")
    single = {t: _mean_scores(train_fn, (t,), seeds)[t] for t in tasks}
    for t, s in single.items():
        if s == 0:
            raise ValueError(
                f"pairwise_transfer: single-task score of {t!r} is 0; the "
                "relative gain is undefined"
            )
    k = len(tasks)
    values = np.zeros((k, k))
    paired: dict[tuple[str, str], float] = {}
    for i, j in itertools.combinations(range(k), 2):
        scores = _mean_scores(train_fn, (tasks[i], tasks[j]), seeds)
        for src, dst in ((i, j), (j, i)):
            paired[(tasks[src], tasks[dst])] = scores[tasks[dst]]
            base = single[tasks[dst]]
            values[src, dst] = (scores[tasks[dst]] - base) / abs(base)
    trainings = len(seeds) * (k + k * (k - 1) // 2)
    matrix = AffinityMatrix(tasks, values, "transfer", {"seeds": list(seeds)})
    return PairwiseResult(matrix, single, paired, trainings)


def rank_correlation(
    cheap: AffinityMatrix, truth: AffinityMatrix, symmetric: bool | None = None
) -> float:
    """Spearman's rank correlation of the off-diagonal entries of two matrices.

    With ``symmetric`` (default: when ``cheap`` is symmetric, like a cosine) both matrices are
    symmetrised first and each pair counts once, so that a symmetric measure is not judged on
    a direction it cannot see.
    """
    if cheap.tasks != truth.tasks:
        if sorted(cheap.tasks) != sorted(truth.tasks):
            raise ValueError(
                f"rank_correlation: tasks differ: {list(cheap.tasks)} vs {list(truth.tasks)}"
            )
        order = [cheap.index(t) for t in truth.tasks]
        cheap = AffinityMatrix(truth.tasks, cheap.values[np.ix_(order, order)], cheap.kind)
    if symmetric is None:
        symmetric = bool(np.allclose(cheap.values, cheap.values.T, equal_nan=True))
    a, b = cheap.values, truth.values
    if symmetric:
        iu = np.triu_indices(cheap.size, 1)
        x, y = ((a + a.T) / 2)[iu], ((b + b.T) / 2)[iu]
    else:
        x, y = cheap.off_diagonal(), truth.off_diagonal()
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan  # undefined with fewer than 3 pairs or a constant side
    return float(spearmanr(x[keep], y[keep]).statistic)


def main_score(task: Task, metrics: Mapping[str, float]) -> float:
    """The task's first metric as a higher-is-better score (negated when lower is better)."""
    if not task.metrics:
        return -float(metrics["loss"])
    metric = task.metrics[0]
    value = float(metrics[metric.name])
    return value if metric.higher_is_better else -value


def config_trainer(cfg: Any, split: str = "val") -> TrainFn:
    """A ``train_fn`` training ``cfg`` (a :class:`~manytask.config.TrainConfig`) on a group.

    Each call trains a fresh model on the group's tasks only (``cfg.tasks`` replaced, no run
    directory) through :func:`manytask.run.train_from_config` and returns each task's
    :func:`main_score` on ``split``.
    """
    from ..run import train_from_config

    if split not in ("val", "test"):
        raise ValueError(f"config_trainer: split must be 'val' or 'test', got {split!r}")

    def train(group: tuple[str, ...], seed: int) -> dict[str, float]:
        run_cfg = dataclasses.replace(
            cfg, tasks=list(group), seed=seed, run_dir=None, resume=False, progress=False
        )
        results = train_from_config(run_cfg)
        tasks = {t.name: t for t in results["trainer"].tasks}
        return {t: main_score(tasks[t], results[split][t]) for t in group}

    return train


def grouping_scores(
    grouping: Grouping, train_fn: TrainFn, seeds: Sequence[int] = (0,)
) -> dict[str, float]:
    """Train each group of ``grouping`` and return every task's score from the group that
    serves it (the one the search chose for it), averaged over ``seeds``."""
    out: dict[str, float] = {}
    for k, group in enumerate(grouping.groups):
        served = [t for t, g in grouping.serving.items() if g == k]
        if not served:
            continue
        scores = _mean_scores(train_fn, group, seeds)
        out.update({t: scores[t] for t in served})
    return out
