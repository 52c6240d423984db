"""Data maps per task and the task vectors STG-MTL clusters.

A data map (Swayamdipta et al., 2020, "Dataset Cartography", EMNLP, Section 2) describes each
training example by the probability the model gives its true label, recorded once per epoch:
its *confidence* is the mean of those probabilities over epochs, its *variability* their
standard deviation. STG-MTL (Sherif et al., 2023, "STG-MTL: Scalable Task Grouping for
Multi-Task Learning Using Data Map", Section 3) records one data map per task from a single
joint run and uses it as the task's feature vector for clustering
(:mod:`manytask.grouping.clustering`).

Task vectors (:func:`task_vectors`):

* ``"samples"`` (STG-MTL's own): the confidence and variability of every example, in order;
  this needs every task labelled on the same examples (Census-Income, MultiDigits);
* ``"histogram"``: the share of a task's examples in each cell of a ``bins x bins`` grid over
  (confidence, variability) in [0, 1] x [0, 0.5]; it compares tasks that have their own
  examples (the text tasks), where per-example vectors cannot be aligned. This is our
  adaptation, not the paper's.

Only classification and binary tasks have a "true label probability"; a regression task is an
error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..tasks import Task
from .matrix import AffinityMatrix

VectorKind = Literal["auto", "samples", "histogram"]


@dataclass(frozen=True)
class DataMap:
    """One task's data map: per-example confidence and variability, and each example's row
    position in the probe data (so that tasks labelled on the same rows can be aligned)."""

    task: str
    confidence: np.ndarray
    variability: np.ndarray
    rows: np.ndarray
    epochs: int


def true_label_probability(task: Task, output: Tensor, target: Tensor) -> Tensor:
    """``p(y_true | x)`` per labelled example: softmax for classes, sigmoid for binary."""
    if task.kind == "classification":
        probs = torch.softmax(output.float(), dim=-1)
        return probs.gather(1, target.long().reshape(-1, 1)).reshape(-1)
    if task.kind == "binary":
        p = torch.sigmoid(output.float().reshape(-1))
        y = target.reshape(-1).float()
        return y * p + (1 - y) * (1 - p)
    raise ValueError(
        f"data maps need classification or binary tasks; task {task.name!r} is {task.kind}"
    )


def _split_batch(batch: Any) -> tuple[Any, Mapping[str, Tensor]]:
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if hasattr(batch, "x") and hasattr(batch, "targets"):
        return batch.x, batch.targets
    raise TypeError(
        f"expected a batch (inputs, {{task: target}}) or an object with .x and "
        f".targets, got {type(batch).__name__}"
    )


class DataMapRecorder:
    """Records the true-label probability of every probe example, once per call.

    ``probe`` must yield the same examples in the same order each time (e.g.
    :func:`manytask.data.text.stacked_batches` or unshuffled batches of the training set).
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if t.kind == "regression":
                raise ValueError(
                    f"DataMapRecorder: task {t.name!r} is a regression task; data "
                    "maps need classification or binary tasks"
                )
        self.tasks = list(tasks)
        self.history: dict[str, list[np.ndarray]] = {t.name: [] for t in self.tasks}
        self.rows: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def record(self, model: nn.Module, probe: Iterable[Any]) -> None:
        was_training = model.training
        model.eval()
        probs: dict[str, list[Tensor]] = {t.name: [] for t in self.tasks}
        rows: dict[str, list[Tensor]] = {t.name: [] for t in self.tasks}
        offset = 0
        for batch in probe:
            x, targets = _split_batch(batch)
            outputs = model(x)
            n = next(iter(targets.values())).shape[0] if targets else 0
            for task in self.tasks:
                if task.name not in targets:
                    continue
                target = targets[task.name]
                mask = task.labelled(target)
                probs[task.name].append(
                    true_label_probability(task, outputs[task.name][mask], target[mask]).cpu()
                )
                rows[task.name].append(torch.nonzero(mask).reshape(-1).cpu() + offset)
            offset += n
        model.train(was_training)
        for task in self.tasks:
            if not probs[task.name]:
                raise ValueError(
                    f"DataMapRecorder: the probe data has no label for task {task.name!r}"
                )
            p = torch.cat(probs[task.name]).numpy().astype(np.float64)
            r = torch.cat(rows[task.name]).numpy()
            if task.name in self.rows and not np.array_equal(self.rows[task.name], r):
                raise ValueError(
                    f"DataMapRecorder: the probe data changed between epochs for "
                    f"task {task.name!r}; it must be in a fixed order"
                )
            self.rows[task.name] = r
            self.history[task.name].append(p)

    def maps(self) -> dict[str, DataMap]:
        out = {}
        for name, history in self.history.items():
            if not history:
                raise ValueError("DataMapRecorder: nothing recorded yet")
            stacked = np.stack(history)
            out[name] = DataMap(
                name, stacked.mean(0), stacked.std(0), self.rows[name], len(history)
            )
        return out


def aligned(maps: Mapping[str, DataMap]) -> bool:
    """Whether every task's data map covers the same probe rows (per-example vectors align)."""
    rows = [m.rows for m in maps.values()]
    return all(np.array_equal(rows[0], r) for r in rows[1:])


def task_vectors(
    maps: Mapping[str, DataMap], kind: VectorKind = "auto", bins: int = 10
) -> tuple[np.ndarray, str]:
    """``(K x D task vectors, the kind used)`` from the data maps, in ``maps``' order.

    ``"auto"`` takes ``"samples"`` when the tasks are labelled on the same rows, else
    ``"histogram"``.
    """
    if not maps:
        raise ValueError("task_vectors: no data map")
    if kind not in ("auto", "samples", "histogram"):
        raise ValueError(
            f"task_vectors: kind must be 'auto', 'samples' or 'histogram', got {kind!r}"
        )
    if kind == "auto":
        kind = "samples" if aligned(maps) else "histogram"
    if kind == "samples":
        if not aligned(maps):
            raise ValueError(
                "task_vectors: 'samples' needs every task labelled on the same "
                "probe rows; use kind='histogram'"
            )
        return np.stack(
            [np.concatenate([m.confidence, m.variability]) for m in maps.values()]
        ), kind
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"task_vectors: bins must be a positive integer, got {bins!r}")
    vectors = []
    for m in maps.values():
        hist, _, _ = np.histogram2d(
            m.confidence, m.variability, bins=bins, range=[[0.0, 1.0], [0.0, 0.5]]
        )
        vectors.append(hist.reshape(-1) / max(len(m.confidence), 1))
    return np.stack(vectors), kind


def datamap_affinity(
    maps: Mapping[str, DataMap], kind: VectorKind = "auto", bins: int = 10
) -> AffinityMatrix:
    """Similarity of tasks' data maps: ``-d(v_i, v_j) / median off-diagonal distance``.

    Symmetric, 0 on the diagonal and negative elsewhere: closer data maps, higher affinity.
    It ranks pairs (for rank correlations and the group search) the way STG-MTL's clustering
    sees them.
    """
    vectors, used = task_vectors(maps, kind, bins)
    d = np.sqrt(((vectors[:, None, :] - vectors[None]) ** 2).sum(-1))
    off = d[~np.eye(len(d), dtype=bool)]
    scale = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
    return AffinityMatrix(
        tuple(maps),
        0.0 - d / scale,  # 0.0 - x: the diagonal is +0, not -0
        "datamap",
        {"vectors": used, "epochs": next(iter(maps.values())).epochs},
    )
