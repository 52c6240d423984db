"""The multi-task input convention of the boosting estimators: X, y and one task id per row.

scikit-learn estimators take ``fit(X, y)``. A multi-task problem also needs each row's task;
these estimators take it in one of two ways:

* ``fit(X, y, task=t)`` / ``predict(X, task=t)``: ``t`` is a 1-D array of task ids (any
  sortable labels: ints or strings), one per row; ``X`` holds only features;
* ``task_column=j`` (a constructor parameter): column ``j`` of ``X`` holds the task id (it must
  then be numeric) and is removed from the features, so that ``fit(X, y)`` works inside
  pipelines, ``cross_val_score`` and the like.

With neither, every row belongs to one task (a single-task problem): that is what
scikit-learn's estimator checks exercise. Task ids seen by ``predict`` must have been seen by
``fit``.
"""

from __future__ import annotations

import numpy as np


def split_tasks(
    owner: str, X: np.ndarray, task: object, task_column: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(features, task ids)`` of ``X`` under the convention above."""
    if task is not None and task_column is not None:
        raise ValueError(f"{owner}: give the task ids through task= or task_column, not both")
    if task is not None:
        ids = np.asarray(task)
        if ids.ndim != 1 or ids.shape[0] != X.shape[0]:
            raise ValueError(
                f"{owner}: task must be a 1-D array with one id per row of X ({X.shape[0]}), "
                f"got shape {ids.shape}"
            )
        return X, ids
    if task_column is not None:
        if not -X.shape[1] <= task_column < X.shape[1]:
            raise ValueError(
                f"{owner}: task_column={task_column} is outside X's {X.shape[1]} columns"
            )
        col = task_column % X.shape[1]
        return np.delete(X, col, axis=1), X[:, col]
    return X, np.zeros(X.shape[0], dtype=np.int64)


def task_index(owner: str, ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Position of every row's task id in the sorted array ``known`` (ValueError if unseen)."""
    pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
    bad = known[pos] != ids
    if bool(np.any(bad)):
        raise ValueError(
            f"{owner}: task id(s) {sorted(set(np.asarray(ids)[bad].tolist()))[:5]} were not "
            f"seen in fit (known: {known.tolist()})"
        )
    return pos
