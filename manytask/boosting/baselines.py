"""The two baselines R-MTGB is compared with: one booster per task, and one for all tasks.

Both wrap any scikit-learn estimator (default: :class:`sklearn.ensemble.GradientBoostingRegressor`)
and take the task ids like R-MTGB (:mod:`manytask.boosting.tasks`):

* :class:`SingleTaskBoosting` clones the estimator once per task and fits each clone on its
  task's rows only (no transfer between tasks);
* :class:`PooledBoosting` fits one clone on all rows, ignoring which task a row belongs to
  (full transfer), or, with ``task_as_feature=True``, with the task's one-hot code appended to
  the features (the trees may then split on the task).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from .tasks import split_tasks, task_index


def _default(estimator: Any) -> Any:
    return GradientBoostingRegressor() if estimator is None else estimator


def _has_proba(meta: Any) -> bool:
    """Whether the wrapped estimator has ``predict_proba`` (a classifier)."""
    return hasattr(_default(meta.estimator), "predict_proba")


class SingleTaskBoosting(BaseEstimator):
    """One clone of ``estimator`` per task, each fitted on its own task's rows."""

    def __init__(self, estimator: Any = None, task_column: int | None = None) -> None:
        self.estimator = estimator
        self.task_column = task_column

    def fit(self, X: Any, y: Any, task: Any = None) -> SingleTaskBoosting:
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        feats, ids = split_tasks(type(self).__name__, X, task, self.task_column)
        self.tasks_ = np.unique(ids)
        t = task_index(type(self).__name__, ids, self.tasks_)
        self.estimators_ = [
            clone(_default(self.estimator)).fit(feats[t == r], y[t == r])
            for r in range(len(self.tasks_))
        ]
        return self

    def _per_task(self, X: Any, task: Any, method: str) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        feats, ids = split_tasks(type(self).__name__, X, task, self.task_column)
        t = task_index(type(self).__name__, ids, self.tasks_)
        out: np.ndarray | None = None
        for r, est in enumerate(self.estimators_):
            rows = np.flatnonzero(t == r)
            if rows.size:
                values = np.asarray(getattr(est, method)(feats[rows]))
                if out is None:
                    out = np.empty((len(t), *values.shape[1:]), dtype=values.dtype)
                out[rows] = values
        assert out is not None  # X has at least one row (validate_data)
        return out

    def predict(self, X: Any, task: Any = None) -> np.ndarray:
        return self._per_task(X, task, "predict")

    @available_if(_has_proba)
    def predict_proba(self, X: Any, task: Any = None) -> np.ndarray:
        return self._per_task(X, task, "predict_proba")


class PooledBoosting(BaseEstimator):
    """One clone of ``estimator`` on all tasks' rows (optionally with a one-hot task code)."""

    def __init__(
        self, estimator: Any = None, task_column: int | None = None, task_as_feature: bool = False
    ) -> None:
        self.estimator = estimator
        self.task_column = task_column
        self.task_as_feature = task_as_feature

    def _features(self, X: Any, task: Any, *, reset: bool) -> np.ndarray:
        X = validate_data(self, X, dtype=np.float64, reset=reset)
        feats, ids = split_tasks(type(self).__name__, X, task, self.task_column)
        if reset:
            self.tasks_ = np.unique(ids)
        t = task_index(type(self).__name__, ids, self.tasks_)
        if not self.task_as_feature:
            return feats
        return np.hstack([feats, np.eye(len(self.tasks_))[t]])

    def fit(self, X: Any, y: Any, task: Any = None) -> PooledBoosting:
        _, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        self.estimator_ = clone(_default(self.estimator)).fit(
            self._features(X, task, reset=True), y
        )
        return self

    def predict(self, X: Any, task: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict(self._features(X, task, reset=False)))

    @available_if(_has_proba)
    def predict_proba(self, X: Any, task: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict_proba(self._features(X, task, reset=False)))
