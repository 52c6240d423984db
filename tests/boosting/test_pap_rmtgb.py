"""R-MTGB: finds planted outlier tasks, reduces to scikit-learn's boosting where it should,
its theta gradient is the loss's derivative, and its estimators pass scikit-learn's checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.utils.estimator_checks import check_estimator

from manytask.boosting import PooledBoosting, RMTGBClassifier, RMTGBRegressor, SingleTaskBoosting
from manytask.boosting.rmtgb import Blocks, SquaredLoss


def planted(seed: int, n_tasks: int = 8, outliers: tuple[int, ...] = (2, 5), n: int = 150):
    """Tasks sharing one function (up to small perturbations), and outlier tasks whose
    function is another one, negated."""
    rng = np.random.RandomState(seed)
    d = 5
    w_common, w_out = rng.randn(d), rng.randn(d)
    xs, ys, ts = [], [], []
    for r in range(n_tasks):
        x = rng.uniform(-1, 1, (n, d))
        w = w_out if r in outliers else w_common + 0.1 * rng.randn(d)
        y = np.sin(2 * x @ w) + x[:, 0] ** 2 + 0.1 * rng.randn(n)
        xs.append(x)
        ys.append(-y if r in outliers else y)
        ts.append(np.full(n, r))
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identifies_planted_outlier_tasks(seed: int) -> None:
    X, y, t = planted(seed)
    model = RMTGBRegressor(
        n_estimators_shared=30, n_estimators_group=30, n_estimators_task=5, random_state=0
    ).fit(X, y, task=t)
    assert model.outlier_tasks_.tolist() == [2, 5]
    weights = model.task_weights_
    assert weights[[2, 5]].min() > 0.8 and np.delete(weights, [2, 5]).max() < 0.3


def test_string_task_ids_and_task_column_agree() -> None:
    X, y, t = planted(0, n_tasks=4, outliers=(1,), n=60)
    names = np.array(["w", "x", "y", "z"])[t]
    kw = {"n_estimators_shared": 5, "n_estimators_group": 5, "n_estimators_task": 3}
    a = RMTGBRegressor(**kw, random_state=0).fit(X, y, task=names)
    b = RMTGBRegressor(**kw, task_column=2, random_state=0).fit(np.insert(X, 2, t, axis=1), y)
    np.testing.assert_allclose(a.predict(X, task=names), b.predict(np.insert(X, 2, t, axis=1)))
    assert a.outlier_tasks_.tolist() == ["x"]
    with pytest.raises(ValueError, match="not seen"):
        a.predict(X[:3], task=np.array(["w", "q", "z"]))
    with pytest.raises(ValueError, match="not both"):
        RMTGBRegressor(task_column=0).fit(X, y, task=names)


def test_shared_block_alone_is_sklearn_gradient_boosting() -> None:
    rng = np.random.RandomState(0)
    X, y = rng.randn(200, 4), rng.randn(200)
    ours = RMTGBRegressor(n_estimators_shared=20, n_estimators_group=0, n_estimators_task=0)
    ref = GradientBoostingRegressor(n_estimators=20, max_depth=3)
    np.testing.assert_allclose(ours.fit(X, y).predict(X), ref.fit(X, y).predict(X), atol=1e-8)
    labels = (X[:, 0] + 0.5 * rng.randn(200) > 0).astype(int)
    clf = RMTGBClassifier(n_estimators_shared=20, n_estimators_group=0, n_estimators_task=0)
    ref_clf = GradientBoostingClassifier(n_estimators=20, max_depth=3)
    np.testing.assert_allclose(
        clf.fit(X, labels).decision_function(X),
        ref_clf.fit(X, labels).decision_function(X),
        atol=1e-8,
    )


def test_task_block_alone_is_single_task_boosting() -> None:
    X, y, t = planted(1, n_tasks=3, outliers=(0,), n=80)
    ours = RMTGBRegressor(n_estimators_shared=0, n_estimators_group=0, n_estimators_task=15)
    # Our init is the pooled mean; single-task boosting starts from each task's mean, so
    # compare on targets centred per task (both inits are then 0).
    yc = y - np.array([y[t == r].mean() for r in range(3)])[t]
    gb = GradientBoostingRegressor(n_estimators=15, max_depth=3)
    ref = SingleTaskBoosting(gb).fit(X, yc, task=t)
    np.testing.assert_allclose(
        ours.fit(X, yc, task=t).predict(X, task=t), ref.predict(X, task=t), atol=1e-8
    )


def test_theta_gradient_matches_finite_differences() -> None:
    rng = np.random.RandomState(0)
    n, n_tasks = 60, 3
    t = rng.randint(0, n_tasks, n)
    y = rng.randn(n)
    b = Blocks(rng.randn(n), rng.randn(n), rng.randn(n), rng.randn(n))
    model = RMTGBRegressor(theta_l2=0.3)
    model.theta_ = rng.randn(n_tasks)
    grad = model._theta_gradient(y, b, t)

    def objective(theta: np.ndarray, r: int) -> float:
        f = b.combine(expit(theta)[t])
        rows = t == r
        return SquaredLoss.loss(y[rows], f[rows]) + 0.3 * theta[r] ** 2

    for r in range(n_tasks):
        e = np.zeros(n_tasks)
        e[r] = 1e-6
        numeric = (objective(model.theta_ + e, r) - objective(model.theta_ - e, r)) / 2e-6
        assert grad[r] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_classifier_refuses_more_than_two_classes() -> None:
    X = np.random.RandomState(0).randn(30, 2)
    with pytest.raises(ValueError, match="Only binary"):
        RMTGBClassifier().fit(X, np.arange(30) % 3)


@pytest.mark.parametrize(
    "estimator",
    [
        RMTGBRegressor(n_estimators_shared=10, n_estimators_group=5, n_estimators_task=5),
        RMTGBClassifier(n_estimators_shared=10, n_estimators_group=5, n_estimators_task=5),
        # The wrapped booster gets a fixed random_state: scikit-learn's idempotence check can
        # only seed the meta-estimator's own parameters, and these have no random_state.
        SingleTaskBoosting(GradientBoostingRegressor(n_estimators=10, random_state=0)),
        PooledBoosting(
            GradientBoostingRegressor(n_estimators=10, random_state=0), task_as_feature=True
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_scikit_learn_estimator_checks(estimator) -> None:
    # Run with default parameters, i.e. task_column=None: every row is one task, which is what
    # the checks' single-output data means. No check is skipped; RMTGBClassifier declares
    # multi_class=False, so scikit-learn replaces its multiclass checks by the check that
    # fitting three classes raises "Only binary classification is supported".
    check_estimator(estimator)
