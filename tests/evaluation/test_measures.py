from __future__ import annotations

import numpy as np
import pytest

from manytask import Task
from manytask.evaluation import delta_m, directions_of, mean_rank, pareto_front

DIRS = {"seg": {"miou": True, "pix": True}, "depth": {"abs": False}}


def test_delta_m_hand_computed() -> None:
    base = {"seg": {"miou": 0.5, "pix": 0.8}, "depth": {"abs": 0.4}}
    res = {"seg": {"miou": 0.55, "pix": 0.76}, "depth": {"abs": 0.5}}
    # seg: (+10% , -5%) -> mean +2.5%; depth: lower is better, 0.4 -> 0.5 is -25%.
    assert delta_m(res, base, DIRS) == pytest.approx((2.5 - 25.0) / 2)
    assert delta_m(res, base, DIRS, average="metrics") == pytest.approx((10 - 5 - 25) / 3)
    assert delta_m(base, base, DIRS) == 0.0


def test_delta_m_errors() -> None:
    base = {"seg": {"miou": 0.0}}
    with pytest.raises(ValueError, match="is 0"):
        delta_m({"seg": {"miou": 0.1}}, base, DIRS)
    with pytest.raises(KeyError, match="no result"):
        delta_m({}, {"seg": {"miou": 0.1}}, DIRS)


def test_directions_from_tasks() -> None:
    dirs = directions_of([Task.classification("a", 3), Task.regression("b")])
    assert (
        dirs["a"]["accuracy"] is True and dirs["b"]["mse"] is False and dirs["a"]["loss"] is False
    )


def test_mean_rank_with_ties() -> None:
    scores = {
        "x": {"seg": {"miou": 0.6, "pix": 0.9}, "depth": {"abs": 0.3}},
        "y": {"seg": {"miou": 0.5, "pix": 0.9}, "depth": {"abs": 0.2}},
        "z": {"seg": {"miou": 0.4, "pix": 0.8}, "depth": {"abs": 0.4}},
    }
    # miou: x1 y2 z3; pix: x1.5 y1.5 z3; abs (lower better): y1 x2 z3
    assert mean_rank(scores, DIRS) == pytest.approx({"x": 4.5 / 3, "y": 4.5 / 3, "z": 3.0})


def test_pareto_front_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for d in (2, 3):
        pts = rng.integers(0, 5, size=(30, d)).astype(float)
        dirs = [True, False, True][:d]
        mask = pareto_front(pts, dirs)
        s = np.where(dirs, 1.0, -1.0)
        for i, p in enumerate(pts * s):
            dominated = any(
                np.all(q >= p) and np.any(q > p) for j, q in enumerate(pts * s) if j != i
            )
            assert mask[i] == (not dominated)
    with pytest.raises(ValueError, match="points must be"):
        pareto_front([[1.0, 2.0]], [True])
