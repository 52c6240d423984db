"""Group search against an independent brute force, and on matrices with an obvious answer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from manytask.grouping import AffinityMatrix, search_groups, set_partitions
from manytask.grouping.search import count_candidates, score_grouping


def _matrix(k: int, seed: int) -> AffinityMatrix:
    rng = np.random.default_rng(seed)
    return AffinityMatrix(tuple(f"t{i}" for i in range(k)), rng.normal(size=(k, k)))


def _brute_force(a: np.ndarray, budget: int, may_share: set[int]) -> float:
    """Best score over every labelling of tasks by groups 0..budget-1 (each task one label, or
    any non-empty set of labels when it may share), scored from the definition."""
    k = a.shape[0]
    options = []
    for j in range(k):
        if j in may_share:
            options.append(
                [
                    set(c)
                    for r in range(1, budget + 1)
                    for c in itertools.combinations(range(budget), r)
                ]
            )
        else:
            options.append([{b} for b in range(budget)])
    best = -math.inf
    for choice in itertools.product(*options):
        groups = [[j for j in range(k) if b in choice[j]] for b in range(budget)]
        groups = [g for g in groups if g]
        total = 0.0
        for j in range(k):
            gains = []
            for g in groups:
                if j in g:
                    others = [i for i in g if i != j]
                    gains.append(sum(a[i, j] for i in others) / len(others) if others else 0.0)
            total += max(gains)
        best = max(best, total)
    return best


CASES = [(k, b, s) for k in (2, 3, 4, 5) for b in (1, 2, 3) for s in (0, 1)]


@pytest.mark.parametrize(("k", "budget", "seed"), CASES)
def test_exhaustive_and_branch_and_bound_match_brute_force(k: int, budget: int, seed: int) -> None:
    matrix = _matrix(k, seed)
    truth = _brute_force(matrix.values, budget, set())
    for method in ("exhaustive", "branch_and_bound"):
        found = search_groups(matrix, budget, method=method)
        assert found.score == pytest.approx(truth, abs=1e-9), method
        assert len(found.groups) <= budget
        assert sorted(t for g in found.groups for t in g) == sorted(matrix.tasks)  # a partition
        # the reported score is the score of the reported groups
        assert score_grouping(matrix, found.groups).score == pytest.approx(found.score)


@pytest.mark.parametrize(("k", "budget", "seed"), [(3, 2, 0), (3, 3, 1), (4, 2, 2), (4, 3, 3)])
def test_overlap_searches_match_brute_force(k: int, budget: int, seed: int) -> None:
    matrix = _matrix(k, seed)
    truth = _brute_force(matrix.values, budget, set(range(k)))
    for method in ("exhaustive", "branch_and_bound"):
        found = search_groups(matrix, budget, overlap=True, method=method)
        assert found.score == pytest.approx(truth, abs=1e-9), method
        assert len(found.groups) <= budget
    # overlap can only help
    assert truth >= _brute_force(matrix.values, budget, set()) - 1e-12


def test_overlap_restricted_to_some_tasks_matches_brute_force() -> None:
    matrix = _matrix(4, 7)
    truth = _brute_force(matrix.values, 3, {1})
    for method in ("exhaustive", "branch_and_bound"):
        found = search_groups(matrix, 3, overlap=["t1"], method=method)
        assert found.score == pytest.approx(truth, abs=1e-9)
        for task in ("t0", "t2", "t3"):
            assert sum(task in g for g in found.groups) == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_wide_beam_is_exact_and_narrow_beam_is_feasible(overlap: bool) -> None:
    matrix = _matrix(5, 11)
    truth = _brute_force(matrix.values, 2, set(range(5)) if overlap else set())
    wide = search_groups(matrix, 2, overlap=overlap, method="beam", beam_width=10_000)
    assert wide.score == pytest.approx(truth, abs=1e-9)
    narrow = search_groups(matrix, 2, overlap=overlap, method="beam", beam_width=1)
    assert narrow.score <= truth + 1e-9
    assert len(narrow.groups) <= 2


def test_branch_and_bound_agrees_with_exhaustive_on_more_tasks() -> None:
    for seed in range(3):
        matrix = _matrix(8, seed)
        a = search_groups(matrix, 3, method="exhaustive")
        b = search_groups(matrix, 3, method="branch_and_bound")
        assert a.score == pytest.approx(b.score, abs=1e-9)


def test_block_structure_is_recovered_by_every_method() -> None:
    k = 6
    values = np.full((k, k), -1.0)
    values[:3, :3] = 1.0
    values[3:, 3:] = 1.0
    values += np.random.default_rng(0).normal(scale=0.05, size=(k, k))
    matrix = AffinityMatrix(tuple("abcdef"), values)
    for method in ("exhaustive", "branch_and_bound", "beam", "cluster"):
        found = search_groups(matrix, 2, method=method)
        assert sorted(found.groups) == [("a", "b", "c"), ("d", "e", "f")], method


def test_budget_one_is_everything_together() -> None:
    matrix = _matrix(4, 0)
    found = search_groups(matrix, 1)
    assert found.groups == (matrix.tasks,)


def test_set_partitions_count_is_the_stirling_sum() -> None:
    for k in range(1, 7):
        for b in range(1, k + 1):
            parts = [tuple(p) for p in set_partitions(k, b)]
            assert len(parts) == len(set(parts)) == count_candidates(k, b, False)
            # brute force: every labelling, canonicalised by first appearance
            canon = set()
            for labels in itertools.product(range(b), repeat=k):
                seen: dict[int, int] = {}
                canon.add(tuple(seen.setdefault(x, len(seen)) for x in labels))
            assert canon == set(parts)
    assert count_candidates(3, 2, True) == 7 + math.comb(7, 2)


def test_search_reports_its_cost_and_is_deterministic() -> None:
    matrix = _matrix(6, 4)
    first = search_groups(matrix, 3, method="cluster", seed=3)
    again = search_groups(matrix, 3, method="cluster", seed=3)
    assert first.groups == again.groups
    exact = search_groups(matrix, 3)
    assert exact.method == "exhaustive"
    assert exact.evaluated == count_candidates(6, 3, False)
    assert exact.seconds >= 0
    assert search_groups(matrix, 3).groups == exact.groups


def test_bad_input_is_refused_with_a_clear_message() -> None:
    matrix = _matrix(3, 0)
    with pytest.raises(ValueError, match="budget"):
        search_groups(matrix, 0)
    with pytest.raises(ValueError, match="method"):
        search_groups(matrix, 2, method="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown task"):
        search_groups(matrix, 2, overlap=["nope"])
    with pytest.raises(TypeError, match="overlap"):
        search_groups(matrix, 2, overlap="t0")
    values = matrix.values.copy()
    values[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        search_groups(AffinityMatrix(matrix.tasks, values), 2)
    with pytest.raises(ValueError, match="max_candidates"):
        search_groups(_matrix(9, 0), 4, method="exhaustive", max_candidates=10)
    with pytest.raises(ValueError, match="shape"):
        AffinityMatrix(("a", "b"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="distinct"):
        AffinityMatrix(("a", "a"), np.zeros((2, 2)))
