"""Figures: heatmaps of affinity matrices and the membership grid of a chosen grouping.

matplotlib is imported inside each function with the Agg backend (no display needed), as in
:mod:`manytask.evaluation.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .matrix import AffinityMatrix
from .search import Grouping


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_affinity(matrices: Sequence[AffinityMatrix], path: str | Path, columns: int = 3) -> Path:
    """One heatmap per matrix, at most ``columns`` to a row (row = source task, column =
    target task); each has its own colour scale, symmetric about 0."""
    if not matrices:
        raise ValueError("plot_affinity: no matrix to plot")
    plt = _pyplot()
    n = len(matrices)
    ncols = min(n, columns)
    nrows = -(-n // ncols)
    k = max(m.size for m in matrices)
    cell = max(3.4, 0.45 * k + 1.2)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell * ncols + 0.6, cell * nrows), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, matrices, strict=False):
        values = m.values.copy()
        off = values[~np.eye(m.size, dtype=bool)]
        off = off[np.isfinite(off)]
        # the diagonal is no inter-task affinity: blank it so it does not set the colour range
        np.fill_diagonal(values, np.nan)
        bound = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
        image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
        ax.set_xticks(range(m.size), m.tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(m.size), m.tasks, fontsize=8)
        ax.set_xlabel("target task", fontsize=8)
        ax.set_ylabel("source task", fontsize=8)
        for i in range(m.size):
            for j in range(m.size):
                if i != j and np.isfinite(values[i, j]):
                    color = "white" if abs(values[i, j]) > 0.6 * bound else "black"
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.2g}",
                        ha="center",
                        va="center",
                        fontsize=6 if m.size > 6 else 7,
                        color=color,
                    )
        ax.set_title(m.kind, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grouping(grouping: Grouping, path: str | Path, title: str | None = None) -> Path:
    """Tasks (rows) x groups (columns): a light cell per membership, a dark one for the group
    serving the task, with the task's predicted gain written in it."""
    plt = _pyplot()
    tasks = list(grouping.gains)
    n = len(grouping.groups)
    grid = np.full((len(tasks), n), np.nan)
    for g, members in enumerate(grouping.groups):
        for t in members:
            grid[tasks.index(t), g] = 0.35
    for t, g in grouping.serving.items():
        grid[tasks.index(t), g] = 1.0
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.6, 0.42 * len(tasks) + 1.4))
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=1.2, aspect="auto")
    for t, g in grouping.serving.items():
        ax.text(
            g,
            tasks.index(t),
            f"{grouping.gains[t]:+.3g}",
            ha="center",
            va="center",
            fontsize=8,
            color="white",  # on the darkest green: the serving group
        )
    ax.set_xticks(
        range(n),
        [f"model {g + 1}\n({len(m)} tasks)" for g, m in enumerate(grouping.groups)],
        fontsize=8,
    )
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_title(
        title or f"{grouping.method}: score {grouping.score:+.4g}, budget {grouping.budget}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
