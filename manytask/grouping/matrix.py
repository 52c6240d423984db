"""A task affinity matrix: who helps whom, with its task names, kind and file formats.

Orientation, the same for every kind: ``values[i, j]`` is the effect of task ``i`` (the
*source*, a row) on task ``j`` (the *target*, a column), as in Fifty et al. (2021), where
``Z_{i->j}`` is the change in task ``j``'s loss after a step on task ``i``. Symmetric measures
(gradient cosine, data-map similarity) simply fill both halves.

Files: ``affinity.json`` holds one or more matrices under ``"matrices"`` with the task list;
a matrix may also be a CSV file whose header row is ``task,<task 1>,...,<task K>`` and whose
rows start with the source task's name.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import load_json, regular_file

ORIENTATION = "values[i][j]: effect of task i (row, source) on task j (column, target)"


@dataclass(frozen=True)
class AffinityMatrix:
    """A K x K float64 matrix over named tasks (see the module docstring for its orientation).

    Args:
        tasks: the task names, in row/column order (distinct).
        values: the K x K matrix; NaN marks a pair that was never measured.
        kind: what was measured (``"lookahead"``, ``"cosine"``, ``"transfer"``, ...).
        info: free-form details (steps averaged, learning rate, ...), kept in the JSON file.
    """

    tasks: tuple[str, ...]
    values: np.ndarray
    kind: str = "affinity"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"AffinityMatrix: tasks must be non-empty and distinct, got {tasks}")
        if not all(isinstance(t, str) and t for t in tasks):
            raise TypeError(f"AffinityMatrix: task names must be non-empty strings, got {tasks}")
        values = np.asarray(self.values, dtype=np.float64)
        if values.shape != (len(tasks), len(tasks)):
            raise ValueError(
                f"AffinityMatrix {self.kind!r}: values of shape {values.shape} for "
                f"{len(tasks)} tasks; expected ({len(tasks)}, {len(tasks)})"
            )
        if np.isinf(values).any():
            raise ValueError(f"AffinityMatrix {self.kind!r}: values contain inf")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "values", values)

    @property
    def size(self) -> int:
        return len(self.tasks)

    def index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise KeyError(
                f"AffinityMatrix {self.kind!r}: no task {task!r}; tasks are {list(self.tasks)}"
            ) from None

    def off_diagonal(self) -> np.ndarray:
        """The K(K-1) off-diagonal values, row by row (what rank correlations compare)."""
        mask = ~np.eye(self.size, dtype=bool)
        return self.values[mask]

    def symmetric(self) -> AffinityMatrix:
        """``(A + A^T) / 2``: the mutual affinity of each pair."""
        return AffinityMatrix(
            self.tasks, (self.values + self.values.T) / 2, self.kind, dict(self.info)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tasks": list(self.tasks),
            "values": [[_json_float(v) for v in row] for row in self.values],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kind: str | None = None) -> AffinityMatrix:
        for key in ("tasks", "values"):
            if key not in data:
                raise ValueError(f"affinity matrix: missing key {key!r} (have {sorted(data)})")
        values = np.array(
            [[math.nan if v is None else float(v) for v in row] for row in data["values"]],
            dtype=np.float64,
        )
        return cls(
            tuple(data["tasks"]),
            values,
            kind or str(data.get("kind", "affinity")),
            dict(data.get("info", {})),
        )

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["task", *self.tasks])
            for task, row in zip(self.tasks, self.values, strict=True):
                writer.writerow([task, *(_csv_float(v) for v in row)])
        return path

    @classmethod
    def read_csv(cls, path: str | Path, kind: str = "affinity") -> AffinityMatrix:
        path = Path(path)
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if len(rows) < 2:
            raise ValueError(f"{path}: expected a header row and one row per task")
        tasks = tuple(rows[0][1:])
        if tuple(r[0] for r in rows[1:]) != tasks:
            raise ValueError(
                f"{path}: row names {[r[0] for r in rows[1:]]} do not match the "
                f"header {list(tasks)}"
            )
        try:
            values = np.array([[float(v) if v else math.nan for v in r[1:]] for r in rows[1:]])
        except ValueError as err:
            raise ValueError(f"{path}: a value is not a number ({err})") from None
        return cls(tasks, values, kind)


def write_matrices(
    path: str | Path, matrices: Sequence[AffinityMatrix], meta: Mapping[str, Any] | None = None
) -> Path:
    """Write several matrices over the same tasks as one ``affinity.json``."""
    if not matrices:
        raise ValueError("write_matrices: no matrix to write")
    tasks = matrices[0].tasks
    for m in matrices:
        if m.tasks != tasks:
            raise ValueError(
                f"write_matrices: matrix {m.kind!r} has tasks {list(m.tasks)}, "
                f"expected {list(tasks)}"
            )
    data = {
        "tasks": list(tasks),
        "orientation": ORIENTATION,
        "matrices": {m.kind: m.to_dict() for m in matrices},
        "meta": dict(meta or {}),
    }
    path = Path(path)
    path.write_text(json.dumps(data, indent=2))
    return path


def read_matrices(path: str | Path) -> dict[str, AffinityMatrix]:
    """``{kind: matrix}`` from an ``affinity.json`` (or a folder holding one) or a CSV file."""
    path = Path(path)
    if path.is_dir():
        path = path / "affinity.json"
    if not path.is_file():
        raise FileNotFoundError(f"no affinity matrix at {path}")
    regular_file(path, what="affinity matrix")  # is_file() passes a link to /dev/zero
    if path.suffix == ".csv":
        return {"affinity": AffinityMatrix.read_csv(path)}
    data = load_json(path, what="affinity matrix")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an affinity matrix file holds a JSON object")
    if "matrices" in data:
        return {kind: AffinityMatrix.from_dict(m, kind) for kind, m in data["matrices"].items()}
    matrix = AffinityMatrix.from_dict(data)
    return {matrix.kind: matrix}


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _csv_float(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))
