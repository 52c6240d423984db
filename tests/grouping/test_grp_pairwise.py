"""Direct pairwise transfer from a training function with a known answer; rank agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from manytask import Task
from manytask.grouping import (
    AffinityMatrix,
    grouping_scores,
    main_score,
    pairwise_transfer,
    rank_correlation,
    search_groups,
)

BASE = {"a": 0.5, "b": 0.8, "c": 2.0}
# the score a target gains, in absolute terms, from each partner (row: source, col: target)
GAIN = {
    ("a", "b"): 0.08,
    ("b", "a"): -0.1,
    ("a", "c"): 0.0,
    ("c", "a"): 0.05,
    ("b", "c"): -0.4,
    ("c", "b"): 0.04,
}


def _train(group: tuple[str, ...], seed: int) -> dict[str, float]:
    noise = 0.01 * (seed - 0.5)  # seeds 0 and 1 average out exactly
    out = {}
    for t in group:
        out[t] = BASE[t] + sum(GAIN[(s, t)] for s in group if s != t) + noise
    return out


def test_transfer_is_the_relative_gain_over_single_task() -> None:
    calls: list[tuple[tuple[str, ...], int]] = []

    def train(group: tuple[str, ...], seed: int) -> dict[str, float]:
        calls.append((group, seed))
        return _train(group, seed)

    result = pairwise_transfer(["a", "b", "c"], train, seeds=(0, 1))
    for (src, dst), gain in GAIN.items():
        i, j = result.transfer.index(src), result.transfer.index(dst)
        assert result.transfer.values[i, j] == pytest.approx(gain / BASE[dst])
    assert result.trainings == len(calls) == 2 * (3 + 3)
    assert result.single == pytest.approx(BASE)


def test_rank_correlation_sees_monotone_maps_and_reversals() -> None:
    rng = np.random.default_rng(0)
    truth = AffinityMatrix(("a", "b", "c", "d"), rng.normal(size=(4, 4)), "transfer")
    same = AffinityMatrix(truth.tasks, np.exp(truth.values), "x")
    flipped = AffinityMatrix(truth.tasks, -truth.values, "y")
    assert rank_correlation(same, truth) == pytest.approx(1.0)
    assert rank_correlation(flipped, truth) == pytest.approx(-1.0)
    # a symmetric measure is compared with the symmetrised truth, one value per pair
    sym = truth.symmetric()
    assert rank_correlation(AffinityMatrix(truth.tasks, sym.values, "cos"), truth) == pytest.approx(
        1.0
    )
    # task order does not matter
    order = [2, 0, 3, 1]
    shuffled = AffinityMatrix(
        tuple(truth.tasks[i] for i in order), truth.values[np.ix_(order, order)], "z"
    )
    assert rank_correlation(shuffled, truth) == pytest.approx(1.0)
    const = AffinityMatrix(truth.tasks, np.zeros((4, 4)), "const")
    assert math.isnan(rank_correlation(const, truth))


def test_grouping_scores_take_each_task_from_its_serving_group() -> None:
    result = pairwise_transfer(["a", "b", "c"], _train, seeds=(0, 1))
    grouping = search_groups(result.transfer, 2)
    scores = grouping_scores(grouping, _train, seeds=(0, 1))
    for task, group_index in grouping.serving.items():
        group = grouping.groups[group_index]
        expected = BASE[task] + sum(GAIN[(s, task)] for s in group if s != task)
        assert scores[task] == pytest.approx(expected)
    # the predicted score is the realised relative gain when transfers add up (pairs only)
    realised = sum((scores[t] - BASE[t]) / BASE[t] for t in BASE)
    if all(len(g) <= 2 for g in grouping.groups):
        assert grouping.score == pytest.approx(realised)


def test_main_score_is_signed_by_direction() -> None:
    assert main_score(Task.binary("b"), {"auc": 0.7, "accuracy": 0.6}) == 0.7
    assert main_score(Task.regression("r"), {"mse": 0.3, "mae": 0.4}) == -0.3


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        pairwise_transfer(["a"], _train)
    with pytest.raises(ValueError, match="no finite score"):
        pairwise_transfer(["a", "b"], lambda g, s: {t: math.nan for t in g})
    with pytest.raises(ValueError, match="is 0"):
        pairwise_transfer(["a", "b"], lambda g, s: dict.fromkeys(g, 0.0))
