"""R-MTGB: robust multi-task gradient boosting with a learned outlier-task partition.

Emami, Martínez-Muñoz, Hernández-Lobato et al., "Robust-Multi-Task Gradient Boosting" (reference
code: GAA-UAM/R-MTGB). Task ``r``'s model is the sum of three sequentially trained blocks,

    ``F_r(x) = f_0 + f_s(x) + sigma(theta_r) f_o(x) + (1 - sigma(theta_r)) f_n(x) + f_r(x)``,

1. **shared block**: ``n_estimators_shared`` boosting rounds of trees ``f_s`` fitted to every
   task's rows (what all tasks have in common);
2. **outlier block**: ``n_estimators_group`` rounds, each fitting one tree to the outlier
   ensemble ``f_o`` and one to the non-outlier ensemble ``f_n``; each row's pseudo-residual is
   weighted by ``dF/df_o = sigma(theta_r)`` (resp. ``1 - sigma(theta_r)``) -- the chain rule of
   the loss through the mixture -- and after each round every ``theta_r`` takes a gradient step
   on task ``r``'s mean training loss plus the regulariser ``theta_l2 * theta_r^2`` (which pulls
   undecided tasks to the middle, ``sigma = 1/2``). A task with ``sigma(theta_r) > 1/2`` is
   assigned to the **outlier group** (``outlier_tasks_``);
3. **task block**: ``n_estimators_task`` rounds of trees ``f_r`` fitted to task ``r``'s rows
   only.

Conventions (ours where the paper leaves them open, stated here):

* trees are :class:`sklearn.tree.DecisionTreeRegressor` fitted to the (weighted) negative
  gradient; each leaf then takes one Newton step, ``sum m g / sum m^2 h`` over its rows, with
  ``m`` the row's chain-rule weight (1 outside block 2) and ``h`` the loss Hessian (1 for
  squared error, ``p (1 - p)`` for log-loss), as scikit-learn's gradient boosting does;
* ``f_0`` is the constant that minimises the pooled loss (mean, or log-odds of the mean);
* the two ensembles of block 2 are symmetric; which one is "outlier" is fixed by the start:
  with ``theta_init="loss"`` (default), ``theta_r`` starts at ``theta_init_scale`` times the
  z-score, across tasks, of task ``r``'s training loss after block 1, so the tasks that the
  shared trees explain worst start on the outlier side. ``theta_init="random"`` draws
  ``N(0, 0.1^2)`` as the reference code does; the label of each side is then arbitrary.

The multi-task input convention (``task=`` or ``task_column``) is that of
:mod:`manytask.boosting.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .tasks import split_tasks, task_index


class SquaredLoss:
    """``L = (y - F)^2 / 2``: negative gradient ``y - F``, Hessian 1."""

    @staticmethod
    def init(y: np.ndarray) -> float:
        return float(np.mean(y))

    @staticmethod
    def negative_gradient(y: np.ndarray, f: np.ndarray) -> np.ndarray:
        return y - f

    @staticmethod
    def hessian(y: np.ndarray, f: np.ndarray) -> np.ndarray:
        return np.ones_like(f)

    @staticmethod
    def loss(y: np.ndarray, f: np.ndarray) -> float:
        return float(np.mean((y - f) ** 2) / 2)


class LogLoss:
    """Binary log-loss on the logit ``F``: negative gradient ``y - p``, Hessian ``p (1 - p)``."""

    @staticmethod
    def init(y: np.ndarray) -> float:
        p = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
        return float(np.log(p / (1 - p)))

    @staticmethod
    def negative_gradient(y: np.ndarray, f: np.ndarray) -> np.ndarray:
        return y - expit(f)

    @staticmethod
    def hessian(y: np.ndarray, f: np.ndarray) -> np.ndarray:
        p = expit(f)
        return p * (1 - p)

    @staticmethod
    def loss(y: np.ndarray, f: np.ndarray) -> float:
        # log(1 + e^F) - y F, computed stably
        return float(np.mean(np.logaddexp(0.0, f) - y * f))


@dataclass
class NewtonTree:
    """A fitted tree and the Newton value of each of its nodes (used at its leaves)."""

    tree: DecisionTreeRegressor
    values: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.values[self.tree.apply(X)]


def fit_newton_tree(
    X: np.ndarray,
    gradient: np.ndarray,
    hessian: np.ndarray,
    max_depth: int | None,
    min_samples_leaf: int,
    seed: int,
) -> NewtonTree:
    """A regression tree on ``gradient`` (the weighted negative gradient) whose leaves then take
    the Newton step ``sum gradient / sum hessian`` over their rows."""
    tree = DecisionTreeRegressor(
        max_depth=max_depth, min_samples_leaf=min_samples_leaf, random_state=seed
    )
    tree.fit(X, gradient)
    leaves = tree.apply(X)
    size = tree.tree_.node_count
    num = np.bincount(leaves, weights=gradient, minlength=size)
    den = np.bincount(leaves, weights=hessian, minlength=size)
    values = np.divide(num, den, out=np.zeros(size), where=den > 1e-12)
    return NewtonTree(tree, values)


@dataclass
class Blocks:
    """The raw (pre-link) predictions of the three blocks for a set of rows."""

    shared: np.ndarray
    outlier: np.ndarray
    non_outlier: np.ndarray
    task: np.ndarray

    def combine(self, sigma: np.ndarray) -> np.ndarray:
        """``F = shared + sigma f_o + (1 - sigma) f_n + f_r`` with each row's ``sigma``."""
        return self.shared + sigma * self.outlier + (1 - sigma) * self.non_outlier + self.task


class BaseRMTGB(BaseEstimator):
    """The R-MTGB fit and prediction shared by the regressor and the classifier."""

    _loss: type[SquaredLoss] | type[LogLoss] = SquaredLoss

    def __init__(
        self,
        *,
        n_estimators_shared: int = 50,
        n_estimators_group: int = 50,
        n_estimators_task: int = 50,
        learning_rate: float = 0.1,
        max_depth: int | None = 3,
        min_samples_leaf: int = 1,
        theta_learning_rate: float = 5.0,
        theta_l2: float = 1e-3,
        theta_init: Literal["loss", "random"] = "loss",
        theta_init_scale: float = 1.0,
        task_column: int | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_estimators_shared = n_estimators_shared
        self.n_estimators_group = n_estimators_group
        self.n_estimators_task = n_estimators_task
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.theta_learning_rate = theta_learning_rate
        self.theta_l2 = theta_l2
        self.theta_init = theta_init
        self.theta_init_scale = theta_init_scale
        self.task_column = task_column
        self.random_state = random_state

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        name = type(self).__name__
        for key in ("n_estimators_shared", "n_estimators_group", "n_estimators_task"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: {key} must be a non-negative integer, got {value!r}")
        if self.n_estimators_shared + self.n_estimators_group + self.n_estimators_task == 0:
            raise ValueError(f"{name}: at least one boosting round is needed")
        if not self.learning_rate > 0:
            raise ValueError(f"{name}: learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.theta_learning_rate >= 0 or not self.theta_l2 >= 0:
            raise ValueError(f"{name}: theta_learning_rate and theta_l2 must be >= 0")
        if self.theta_init not in ("loss", "random"):
            raise ValueError(
                f"{name}: theta_init must be 'loss' or 'random', got {self.theta_init!r}"
            )

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any, task: Any = None) -> BaseRMTGB:
        """Fit on rows ``X`` with targets ``y`` and task ids ``task`` (or ``task_column``)."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=self._loss is SquaredLoss)
        feats, ids = split_tasks(type(self).__name__, X, task, self.task_column)
        y = self._encode_y(y)
        self.tasks_ = np.unique(ids)
        t = task_index(type(self).__name__, ids, self.tasks_)
        rng = check_random_state(self.random_state)
        loss, lr, n_tasks = self._loss, self.learning_rate, len(self.tasks_)

        def tree(rows: np.ndarray, grad: np.ndarray, hess: np.ndarray) -> NewtonTree:
            seed = int(rng.randint(np.iinfo(np.int32).max))
            return fit_newton_tree(
                feats[rows], grad, hess, self.max_depth, self.min_samples_leaf, seed
            )

        everyone = np.arange(len(y))
        self.init_ = loss.init(y)
        b = Blocks(np.full(len(y), self.init_), *(np.zeros(len(y)) for _ in range(3)))
        self.shared_trees_: list[NewtonTree] = []
        for _ in range(self.n_estimators_shared):  # block 1: all tasks together
            f = b.shared
            stage = tree(everyone, loss.negative_gradient(y, f), loss.hessian(y, f))
            self.shared_trees_.append(stage)
            b.shared = b.shared + lr * stage.predict(feats)

        self.theta_ = self._initial_theta(y, b.shared, t, n_tasks, rng)
        path = [self.theta_.copy()]
        self.outlier_trees_: list[NewtonTree] = []
        self.non_outlier_trees_: list[NewtonTree] = []
        for _ in range(self.n_estimators_group):  # block 2: the two groups and theta
            for side in ("outlier", "non_outlier"):
                s = expit(self.theta_)[t]
                m = s if side == "outlier" else 1 - s
                f = b.combine(s)
                stage = tree(everyone, m * loss.negative_gradient(y, f), m**2 * loss.hessian(y, f))
                step = lr * stage.predict(feats)
                if side == "outlier":
                    self.outlier_trees_.append(stage)
                    b.outlier = b.outlier + step
                else:
                    self.non_outlier_trees_.append(stage)
                    b.non_outlier = b.non_outlier + step
            self.theta_ = self.theta_ - self.theta_learning_rate * self._theta_gradient(y, b, t)
            path.append(self.theta_.copy())
        self.theta_path_ = np.stack(path)

        self.task_trees_: list[list[NewtonTree]] = [[] for _ in range(n_tasks)]
        s = expit(self.theta_)[t]
        for _ in range(self.n_estimators_task):  # block 3: each task on its own rows
            for r in range(n_tasks):
                rows = np.flatnonzero(t == r)
                f = b.combine(s)[rows]
                stage = tree(rows, loss.negative_gradient(y[rows], f), loss.hessian(y[rows], f))
                self.task_trees_[r].append(stage)
                b.task[rows] = b.task[rows] + lr * stage.predict(feats[rows])
        self.train_loss_ = loss.loss(y, b.combine(s))
        return self

    def _initial_theta(
        self,
        y: np.ndarray,
        f: np.ndarray,
        t: np.ndarray,
        n_tasks: int,
        rng: np.random.RandomState,
    ) -> np.ndarray:
        if self.theta_init == "random":
            return rng.normal(0.0, 0.1, n_tasks)
        losses = np.array([self._loss.loss(y[t == r], f[t == r]) for r in range(n_tasks)])
        spread = losses.std()
        if n_tasks < 2 or spread <= 1e-12 * max(1.0, abs(losses.mean())):
            return np.zeros(n_tasks)
        return self.theta_init_scale * (losses - losses.mean()) / spread

    def _theta_gradient(self, y: np.ndarray, b: Blocks, t: np.ndarray) -> np.ndarray:
        """``d/d theta_r`` of task ``r``'s mean loss plus ``theta_l2 theta_r^2``:
        ``mean_r(-g (f_o - f_n)) sigma'(theta_r) + 2 theta_l2 theta_r``."""
        sig = expit(self.theta_)
        g = self._loss.negative_gradient(y, b.combine(sig[t]))
        per_row = -g * (b.outlier - b.non_outlier)
        counts = np.bincount(t, minlength=len(sig))
        mean = np.bincount(t, weights=per_row, minlength=len(sig)) / np.maximum(counts, 1)
        return mean * sig * (1 - sig) + 2 * self.theta_l2 * self.theta_

    # ------------------------------------------------------------------ predict
    @property
    def task_weights_(self) -> np.ndarray:
        """``sigma(theta_r)`` per task (order of ``tasks_``): weight of the outlier ensemble."""
        check_is_fitted(self)
        return np.asarray(expit(self.theta_))

    @property
    def outlier_tasks_(self) -> np.ndarray:
        """Task ids assigned to the outlier group, ``sigma(theta_r) > 1/2``."""
        return np.asarray(self.tasks_[self.task_weights_ > 0.5])

    def _raw_predict(self, X: Any, task: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        feats, ids = split_tasks(type(self).__name__, X, task, self.task_column)
        t = task_index(type(self).__name__, ids, self.tasks_)
        lr = self.learning_rate
        n = feats.shape[0]
        b = Blocks(np.full(n, self.init_), *(np.zeros(n) for _ in range(3)))
        for stage in self.shared_trees_:
            b.shared += lr * stage.predict(feats)
        for stage in self.outlier_trees_:
            b.outlier += lr * stage.predict(feats)
        for stage in self.non_outlier_trees_:
            b.non_outlier += lr * stage.predict(feats)
        for r, stages in enumerate(self.task_trees_):
            rows = np.flatnonzero(t == r)
            if rows.size:
                for stage in stages:
                    b.task[rows] += lr * stage.predict(feats[rows])
        return b.combine(expit(self.theta_)[t])


class RMTGBRegressor(RegressorMixin, BaseRMTGB):
    """R-MTGB for regression (squared error). See the module docstring."""

    _loss = SquaredLoss

    def predict(self, X: Any, task: Any = None) -> np.ndarray:
        """Predictions for rows ``X`` of tasks ``task`` (or ``task_column``)."""
        return self._raw_predict(X, task)


class RMTGBClassifier(ClassifierMixin, BaseRMTGB):
    """R-MTGB for binary classification (log-loss on the logit). See the module docstring.

    Two classes exactly; ``classes_`` are their labels (sorted), the second being positive.
    """

    _loss = LogLoss

    def _encode_y(self, y: np.ndarray) -> np.ndarray:
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(
                f"RMTGBClassifier: Only binary classification is supported. y has "
                f"{len(self.classes_)} class(es) {self.classes_.tolist()[:5]}"
            )
        return encoded.astype(np.float64)

    def decision_function(self, X: Any, task: Any = None) -> np.ndarray:
        """The logit ``F`` of the positive class."""
        return self._raw_predict(X, task)

    def predict_proba(self, X: Any, task: Any = None) -> np.ndarray:
        p = expit(self.decision_function(X, task))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any, task: Any = None) -> np.ndarray:
        positive = self.decision_function(X, task) > 0  # checks fitted before classes_ is read
        return np.asarray(self.classes_[positive.astype(int)])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags
