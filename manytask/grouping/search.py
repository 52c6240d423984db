"""Choose task groups under a budget of B models, from an affinity matrix.

The score is the network-selection objective of Fifty et al. (2021, "Efficiently Identifying
Task Groupings for Multi-Task Learning", NeurIPS, Section 3.2): the affinity *onto* task ``j``
from a group ``S`` that contains it is the mean of ``A[i, j]`` over the other members
``i in S \\ {j}`` (0 for a group of one: training alone is the reference every affinity is
measured against); a grouping serves each task by the group in which that affinity is highest,
and its score is the sum over tasks of those best affinities. With
:class:`~manytask.grouping.matrix.AffinityMatrix` of kind ``"transfer"`` this is the predicted
sum of relative gains over single-task models.

A grouping is at most ``budget`` distinct non-empty groups that cover every task. A task may
belong to several groups only where ``overlap`` allows it (``True``: every task; a collection
of names: those tasks). Searches:

* ``"exhaustive"``: every set partition into at most B blocks (restricted-growth strings) or,
  with overlap, every collection of at most B distinct subsets;
* ``"branch_and_bound"``: exact, depth-first with an upper bound (mean of the best remaining
  affinities onto each task), started from the beam-search solution so that it prunes early;
* ``"beam"``: tasks assigned one at a time, keeping the ``beam_width`` best partial groupings;
* ``"cluster"``: k-means of task vectors into B clusters (the route of STG-MTL for many tasks,
  Sherif et al., 2023), see :func:`manytask.grouping.clustering.cluster_tasks`.

Every search returns a :class:`Grouping`: the groups, the predicted score, the number of
candidates (or search nodes) evaluated and the wall time.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..registry import Param, Registry
from .matrix import AffinityMatrix

Method = Literal["auto", "exhaustive", "branch_and_bound", "beam", "cluster"]
Overlap = bool | Collection[str]
_TOL = 1e-12


@dataclass(frozen=True)
class Grouping:
    """A chosen grouping and how it was found.

    ``gains[task]`` is the affinity onto ``task`` from the group serving it (``serving[task]``,
    an index into ``groups``); ``score`` is their sum.
    """

    groups: tuple[tuple[str, ...], ...]
    score: float
    gains: dict[str, float]
    serving: dict[str, int]
    method: str
    evaluated: int
    seconds: float
    budget: int
    overlap: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_gain(self) -> float:
        return self.score / len(self.gains)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [list(g) for g in self.groups],
            "score": self.score,
            "mean_gain": self.mean_gain,
            "gains": self.gains,
            "serving": {t: list(self.groups[i]) for t, i in self.serving.items()},
            "method": self.method,
            "evaluated": self.evaluated,
            "seconds": self.seconds,
            "budget": self.budget,
            "overlap": list(self.overlap),
            "info": self.info,
        }


# ----------------------------------------------------------------------------- scoring
def _check_matrix(matrix: AffinityMatrix) -> np.ndarray:
    values = matrix.values.copy()
    off = ~np.eye(matrix.size, dtype=bool)
    if np.isnan(values[off]).any():
        i, j = np.argwhere(np.isnan(values) & off)[0]
        raise ValueError(
            f"group search: affinity {matrix.kind!r} of {matrix.tasks[i]!r} on "
            f"{matrix.tasks[j]!r} is NaN (never measured)"
        )
    np.fill_diagonal(values, 0.0)  # a task's effect on itself is not an inter-task affinity
    return values


def group_gains(matrix: AffinityMatrix, group: Sequence[str]) -> dict[str, float]:
    """``{task: mean of A[i, task] over the other members i}`` (0 for a group of one)."""
    values = _check_matrix(matrix)
    idx = [matrix.index(t) for t in group]
    if len(set(idx)) != len(idx) or not idx:
        raise ValueError(f"group_gains: a group must be non-empty and distinct, got {group}")
    return {matrix.tasks[j]: g for j, g in zip(idx, _gains(values, idx), strict=True)}


def _gains(values: np.ndarray, idx: Sequence[int]) -> list[float]:
    if len(idx) == 1:
        return [0.0]
    sub = values[np.ix_(idx, idx)]  # the diagonal is 0, so a column sum is over the others
    return list(sub.sum(axis=0) / (len(idx) - 1))


def score_grouping(matrix: AffinityMatrix, groups: Sequence[Sequence[str]]) -> Grouping:
    """Score ``groups`` as they are (every task must be in at least one group)."""
    began = time.perf_counter()
    values = _check_matrix(matrix)
    idx = [[matrix.index(t) for t in g] for g in groups]
    return _make(matrix, values, idx, "given", 1, began, len(groups), ())


def _make(
    matrix: AffinityMatrix,
    values: np.ndarray,
    groups: Sequence[Sequence[int]],
    method: str,
    evaluated: int,
    began: float,
    budget: int,
    overlap: tuple[str, ...],
) -> Grouping:
    best = np.full(matrix.size, -math.inf)
    serving = np.full(matrix.size, -1)
    ordered = sorted((sorted(g) for g in groups), key=lambda g: (-len(g), g))
    for k, g in enumerate(ordered):
        for j, gain in zip(g, _gains(values, g), strict=True):
            if gain > best[j] + _TOL:
                best[j], serving[j] = gain, k
    missing = [matrix.tasks[j] for j in range(matrix.size) if serving[j] < 0]
    if missing:
        raise ValueError(f"grouping leaves task(s) {missing} in no group")
    return Grouping(
        groups=tuple(tuple(matrix.tasks[j] for j in g) for g in ordered),
        score=float(best.sum()),
        gains={t: float(best[j]) for j, t in enumerate(matrix.tasks)},
        serving={t: int(serving[j]) for j, t in enumerate(matrix.tasks)},
        method=method,
        evaluated=evaluated,
        seconds=time.perf_counter() - began,
        budget=budget,
        overlap=overlap,
    )


def _score_masks(values: np.ndarray, masks: Sequence[int], k: int) -> float:
    best = np.full(k, -math.inf)
    for mask in masks:
        idx = _members(mask, k)
        best[idx] = np.maximum(best[idx], _gains(values, idx))
    return float(best.sum())


def _members(mask: int, k: int) -> list[int]:
    return [j for j in range(k) if mask >> j & 1]


# ----------------------------------------------------------------------------- exhaustive
def set_partitions(k: int, max_blocks: int) -> Iterator[list[int]]:
    """Every partition of ``range(k)`` into at most ``max_blocks`` blocks, once each, as the
    block index of each element (restricted-growth strings: element 0 in block 0, each next
    element in an existing block or the next new one)."""
    labels = [0] * k

    def grow(i: int, used: int) -> Iterator[list[int]]:
        if i == k:
            yield labels
            return
        for b in range(min(used + 1, max_blocks)):
            labels[i] = b
            yield from grow(i + 1, max(used, b + 1))

    if k == 0:
        return
    yield from grow(1, 1)


def _exclusive_mask(matrix: AffinityMatrix, overlap: tuple[str, ...]) -> int:
    return sum(1 << j for j, t in enumerate(matrix.tasks) if t not in overlap)


def count_candidates(k: int, budget: int, overlap: bool) -> int:
    """How many groupings the exhaustive search visits (partitions, or subset collections)."""
    if not overlap:
        # Stirling numbers of the second kind, summed over 1..budget blocks
        row = [1] + [0] * k
        for _ in range(k):
            row = [0] + [row[b - 1] + b * row[b] for b in range(1, k + 1)]
        return sum(row[1 : min(budget, k) + 1])
    n = 2**k - 1
    return sum(math.comb(n, r) for r in range(1, min(budget, n) + 1))


def _exhaustive(
    matrix: AffinityMatrix,
    values: np.ndarray,
    budget: int,
    overlap: tuple[str, ...],
    max_candidates: int,
) -> tuple[list[list[int]], int]:
    k = matrix.size
    count = count_candidates(k, budget, bool(overlap))
    if count > max_candidates:
        raise ValueError(
            f"exhaustive search: {count} candidate groupings for {k} tasks and budget {budget} "
            f"exceed max_candidates={max_candidates}; use method='branch_and_bound' or 'beam'"
        )
    best, best_groups, evaluated = -math.inf, [list(range(k))], 0
    if not overlap:
        for labels in set_partitions(k, budget):
            blocks = [[j for j in range(k) if labels[j] == b] for b in range(max(labels) + 1)]
            evaluated += 1
            score = sum(sum(_gains(values, b)) for b in blocks)
            if score > best + _TOL:
                best, best_groups = score, blocks
        return best_groups, evaluated
    full, exclusive = (1 << k) - 1, _exclusive_mask(matrix, overlap)
    masks = range(1, full + 1)
    for r in range(1, budget + 1):
        for combo in itertools.combinations(masks, r):
            covered, seen_exclusive, clash = 0, 0, False
            for m in combo:
                if m & exclusive & seen_exclusive:
                    clash = True
                    break
                seen_exclusive |= m & exclusive
                covered |= m
            if clash or covered != full:
                continue
            evaluated += 1
            score = _score_masks(values, combo, k)
            if score > best + _TOL:
                best, best_groups = score, [_members(m, k) for m in combo]
    return best_groups, evaluated


# ----------------------------------------------------------------------------- beam
def _partial_score(values: np.ndarray, blocks: Sequence[int], k: int) -> float:
    best: dict[int, float] = {}
    for mask in blocks:
        idx = _members(mask, k)
        for j, g in zip(idx, _gains(values, idx), strict=True):
            best[j] = max(best.get(j, -math.inf), g)
    return sum(best.values())


def _beam(
    matrix: AffinityMatrix, values: np.ndarray, budget: int, overlap: tuple[str, ...], width: int
) -> tuple[list[list[int]], int, float]:
    k = matrix.size
    beam: list[tuple[int, ...]] = [()]
    evaluated = 0
    for j in range(k):
        bit = 1 << j
        may_overlap = matrix.tasks[j] in overlap
        seen: dict[tuple[int, ...], float] = {}
        for blocks in beam:
            slots = len(blocks) + (1 if len(blocks) < budget else 0)
            choices: Iterator[tuple[int, ...]] = (
                itertools.chain.from_iterable(
                    itertools.combinations(range(slots), r) for r in range(1, slots + 1)
                )
                if may_overlap
                else ((s,) for s in range(slots))
            )
            for choice in choices:
                new = list(blocks)
                for s in choice:
                    if s == len(blocks):  # the slot after the existing groups: a new group
                        new.append(bit)
                    else:
                        new[s] |= bit
                key = tuple(sorted(new))
                if key in seen or len(set(key)) != len(key):
                    continue
                evaluated += 1
                seen[key] = _partial_score(values, key, k)
        ranked = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))
        beam = [key for key, _ in ranked[:width]]
    best = max(beam, key=lambda b: (_score_masks(values, b, k), tuple(-m for m in b)))
    return [_members(m, k) for m in best], evaluated, _score_masks(values, best, k)


# ----------------------------------------------------------------------------- branch and bound
def _top_means(column: np.ndarray) -> float:
    """max over m >= 0 of the mean of the m largest values (0 for m = 0)."""
    best, run = 0.0, 0.0
    for m, v in enumerate(np.sort(column)[::-1], 1):
        run += float(v)
        best = max(best, run / m)
    return best


def _bnb_partition(
    values: np.ndarray, budget: int, start: float, start_groups: list[list[int]]
) -> tuple[list[list[int]], int]:
    k = values.shape[0]
    free_bound = [_top_means(np.delete(values[:, j], j)) for j in range(k)]
    # start just below the seed, so that a leaf tying with it is still recorded as found
    best_score, best_groups = start - 1e-9, start_groups
    labels = [-1] * k
    evaluated = 0

    def bound(t: int, blocks: list[list[int]]) -> float:
        total = sum(free_bound[t:])
        rest = list(range(t, k))
        for block in blocks:
            for j in block:
                fixed = float(values[block, j].sum())
                n = len(block) - 1
                best_j = fixed / n if n else 0.0
                run = fixed
                for m, v in enumerate(np.sort(values[rest, j])[::-1], 1):
                    run += float(v)
                    best_j = max(best_j, run / (n + m))
                total += best_j
        return total

    def visit(t: int, blocks: list[list[int]]) -> None:
        nonlocal evaluated, best_score, best_groups
        evaluated += 1
        if t == k:
            score = sum(sum(_gains(values, b)) for b in blocks)
            if score > best_score + _TOL:
                best_score, best_groups = score, [list(b) for b in blocks]
            return
        if bound(t, blocks) <= best_score + _TOL:
            return
        for b in range(len(blocks) + (1 if len(blocks) < budget else 0)):
            labels[t] = b
            if b == len(blocks):
                blocks.append([t])
            else:
                blocks[b].append(t)
            visit(t + 1, blocks)
            if len(blocks[b]) == 1:
                blocks.pop()
            else:
                blocks[b].pop()

    visit(0, [])
    return best_groups, evaluated


def _bnb_overlap(
    matrix: AffinityMatrix,
    values: np.ndarray,
    budget: int,
    overlap: tuple[str, ...],
    start: float,
    start_groups: list[list[int]],
) -> tuple[list[list[int]], int]:
    k = matrix.size
    full, exclusive = (1 << k) - 1, _exclusive_mask(matrix, overlap)
    masks = list(range(1, full + 1))
    gains = np.full((len(masks), k), -math.inf)
    for row, mask in enumerate(masks):
        idx = _members(mask, k)
        gains[row, idx] = _gains(values, idx)
    order = sorted(
        range(len(masks)), key=lambda r: (-float(gains[r][np.isfinite(gains[r])].sum()), masks[r])
    )
    masks = [masks[r] for r in order]
    gains = gains[order]
    # suffix maxima: the best affinity onto each task from any group at or after position s
    suffix = np.maximum.accumulate(gains[::-1], axis=0)[::-1]
    cover = list(itertools.accumulate(masks[::-1], lambda a, b: a | b))[::-1]
    best_score, best_groups = start - 1e-9, start_groups
    evaluated = 0

    def visit(s0: int, chosen: list[int], cur: np.ndarray, covered: int, used_ex: int) -> None:
        nonlocal evaluated, best_score, best_groups
        evaluated += 1
        if covered == full:
            score = float(cur.sum())
            if score > best_score + _TOL:
                best_score, best_groups = score, [_members(m, k) for m in chosen]
        if len(chosen) == budget:
            return
        for s in range(s0, len(masks)):
            if covered | cover[s] != full:
                return  # later positions cover no more
            if float(np.maximum(cur, suffix[s]).sum()) <= best_score + _TOL:
                return  # the bound only shrinks with s
            mask = masks[s]
            if mask & exclusive & used_ex:
                continue
            chosen.append(mask)
            visit(
                s + 1,
                chosen,
                np.maximum(cur, gains[s]),
                covered | mask,
                used_ex | (mask & exclusive),
            )
            chosen.pop()

    visit(0, [], np.full(k, -math.inf), 0, 0)
    return best_groups, evaluated


# ----------------------------------------------------------------------------- entry point
def _overlap_tasks(matrix: AffinityMatrix, overlap: Overlap) -> tuple[str, ...]:
    if isinstance(overlap, bool):
        return matrix.tasks if overlap else ()
    if isinstance(overlap, str):
        raise TypeError("overlap must be a bool or a collection of task names, not a str")
    names = tuple(overlap)
    unknown = sorted(set(names) - set(matrix.tasks))
    if unknown:
        raise ValueError(f"overlap names unknown task(s) {unknown}; tasks are {list(matrix.tasks)}")
    return tuple(t for t in matrix.tasks if t in names)


# A search: (matrix, values, budget, overlap tasks, **params) -> (groups, evaluated, info).
Found = tuple[list[list[int]], int, dict[str, Any]]
SEARCHES: Registry[Any] = Registry("group search")
_MAX_CANDIDATES = Param("int", 200_000, "refuse (exhaustive) above this many groupings", low=1)
_BEAM_WIDTH = Param("int", 64, "partial groupings kept per step", low=1)


@SEARCHES.register("exhaustive", params={"max_candidates": _MAX_CANDIDATES})
def exhaustive_search(matrix: AffinityMatrix, values: np.ndarray, budget: int,
                      shared: tuple[str, ...], *, max_candidates: int = 200_000) -> Found:
    """Every set partition into at most B blocks (or, with overlap, every collection of at
    most B distinct subsets): exact, refused above ``max_candidates``."""
    groups, evaluated = _exhaustive(matrix, values, budget, shared, max_candidates)
    return groups, evaluated, {}


@SEARCHES.register("beam", params={"beam_width": _BEAM_WIDTH})
def beam_search(matrix: AffinityMatrix, values: np.ndarray, budget: int,
                shared: tuple[str, ...], *, beam_width: int = 64) -> Found:
    """Tasks assigned one at a time, keeping the ``beam_width`` best partial groupings."""
    groups, evaluated, _ = _beam(matrix, values, budget, shared, beam_width)
    return groups, evaluated, {"beam_width": beam_width}


@SEARCHES.register("branch_and_bound", params={"beam_width": _BEAM_WIDTH})
def branch_and_bound_search(matrix: AffinityMatrix, values: np.ndarray, budget: int,
                            shared: tuple[str, ...], *, beam_width: int = 64) -> Found:
    """Exact depth-first search with an upper bound (the mean of the best remaining
    affinities onto each task), started from the beam-search solution."""
    start_groups, seeded, start = _beam(matrix, values, budget, shared, beam_width)
    if shared:
        groups, evaluated = _bnb_overlap(matrix, values, budget, shared, start, start_groups)
    else:
        groups, evaluated = _bnb_partition(values, budget, start, start_groups)
    return groups, evaluated + seeded, {"seeded_by_beam": start}


@SEARCHES.register("cluster", params={
    "seed": Param("int", 0, "seed of k-means", low=0),
    "features": Param("any", None, "K x D task vectors (default: each task's row and column)",
                      nullable=True)})
def cluster_search(matrix: AffinityMatrix, values: np.ndarray, budget: int,
                   shared: tuple[str, ...], *, seed: int = 0,
                   features: np.ndarray | None = None) -> Found:
    """k-means of task vectors into B clusters (STG-MTL, Sherif et al., 2023)."""
    from .clustering import cluster_tasks

    vectors = features if features is not None else np.concatenate([values, values.T], 1)
    clustered = cluster_tasks(vectors, budget, seed=seed, overlap=[matrix.index(t) for t in shared])
    return clustered.groups, clustered.evaluated, {"membership": clustered.membership.tolist()}


def search_groups(
    matrix: AffinityMatrix,
    budget: int,
    *,
    overlap: Overlap = False,
    method: Method = "auto",
    beam_width: int = 64,
    max_candidates: int = 200_000,
    features: np.ndarray | None = None,
    seed: int = 0,
) -> Grouping:
    """The best grouping of ``matrix``'s tasks into at most ``budget`` groups (see the module
    docstring for the score and :data:`SEARCHES` for the methods).

    ``"auto"`` is exhaustive while it visits at most ``max_candidates`` groupings, then branch
    and bound up to 12 tasks (8 with overlap: its bound is loose, 10 tasks can take minutes),
    then beam search. ``features`` (K x D task
    vectors) are used by ``"cluster"`` only; by default each task's row and column of the
    matrix. ``seed`` seeds the clustering.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"search_groups: budget must be a positive integer, got {budget!r}")
    if method != "auto" and method not in SEARCHES:
        try:
            SEARCHES.entry(method)
        except ValueError as err:  # one line with a hint, naming the argument
            raise ValueError(f"search_groups: method: {err} (or auto)") from None
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(
            f"search_groups: beam_width must be a positive integer, got {beam_width!r}"
        )
    given = {"beam_width": beam_width, "max_candidates": max_candidates, "seed": seed,
             "features": features}
    began = time.perf_counter()
    values = _check_matrix(matrix)
    shared = _overlap_tasks(matrix, overlap)
    k = matrix.size
    if method == "auto":
        if count_candidates(k, budget, bool(shared)) <= max_candidates:
            method = "exhaustive"
        elif k <= (8 if shared else 12):
            method = "branch_and_bound"
        else:
            method = "beam"
    entry = SEARCHES.entry(method)
    params = {key: given[key] for key in entry.params}
    SEARCHES.validate(method, params, where="search_groups")
    groups, evaluated, info = entry.target(matrix, values, budget, shared, **params)
    result = _make(matrix, values, groups, method, evaluated, began, budget, shared)
    if info:
        result.info.update(info)
    return result
