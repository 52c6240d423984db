"""The bundled data sets as the benchmarks use them, built from ``configs/*.yaml`` through
the files route (:mod:`manytask.data.declared`): the library itself knows no task list.

* :func:`load_text_task` / :data:`TEXT_TASKS`: one of the eight text tasks of
  ``configs/text.yaml`` as a :class:`~manytask.data.text.TextTask` (every row of its splits;
  ``.capped(...)`` takes the fixed subsets the config's ``sample:`` takes);
* :func:`load_census`: Census-Income (KDD) task group 1 (``configs/census.yaml``) or 2
  (``configs/census-group2.yaml``) as tensors (:class:`CensusData`);
* :func:`read_census` and the column groups of those configs, for benchmarks that build their
  own census tasks.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from manytask.config import load_config
from manytask.data.declared import parse_dataset, prepare_declared, read_file
from manytask.data.declared.build import declared_text_tasks
from manytask.data.declared.spec import select_tasks
from manytask.data.tabular import TabularDataset
from manytask.data.text import TextTask
from manytask.tasks import Task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def dataset_section(config: str) -> dict[str, Any]:
    """The ``dataset:`` section of ``configs/<config>``."""
    section = load_config(CONFIGS / config).dataset
    assert isinstance(section, dict), f"configs/{config} has no dataset: section"
    return dict(section)


# ------------------------------------------------------------------------------- text
def _text_section(fine: bool) -> dict[str, Any]:
    section = dataset_section("text.yaml")
    section["defaults"] = {k: v for k, v in section["defaults"].items() if k != "sample"}
    if fine:  # TREC's 50 fine classes, the training file's own (sorted)
        section["sources"] = [
            {**s, "task": {**s["task"], "label": "fine", "classes": None}}
            if s["task"]["name"] == "trec" else s for s in section["sources"]]
    return section


TEXT_TASKS: tuple[str, ...] = tuple(s["task"]["name"] for s in _text_section(False)["sources"])


def load_text_task(root: str | Path, name: str, *, fine: bool = False) -> TextTask:
    """Task ``name`` of configs/text.yaml read from ``root`` (all rows of every split)."""
    spec = select_tasks(parse_dataset(_text_section(fine), root), [name])
    tasks, _, _ = declared_text_tasks(spec, tempfile.gettempdir())
    return tasks[0]


# ----------------------------------------------------------------------------- census
_GROUP1, _GROUP2 = dataset_section("census.yaml"), dataset_section("census-group2.yaml")
COLUMNS: tuple[str, ...] = tuple(_GROUP1["table"]["columns"])
DENSE: tuple[str, ...] = tuple(_GROUP1["table"]["numeric"])
LOG_DENSE: tuple[str, ...] = tuple(c for c, f in _GROUP1["table"]["transforms"].items()
                                   if f == "log1p")
COLLEGE: tuple[str, ...] = tuple(next(t["positive"] for t in _GROUP2["table"]["tasks"]
                                      if t["name"] == "education"))
FILE_NAME: str = _GROUP1["table"]["file"]


@dataclass
class CensusData:
    """The three splits, the tasks, and what a :class:`TabularInput` needs."""

    train: TabularDataset
    val: TabularDataset
    test: TabularDataset
    tasks: tuple[Task, ...]
    cardinalities: tuple[int, ...]
    categorical_names: tuple[str, ...]
    dense_names: tuple[str, ...]

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)


def load_census(path: str | Path, group: int = 1, *,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0,
                max_rows: int | None = None) -> CensusData:
    """Census-Income from the folder ``path``, task group 1 or 2, split with ``seed``;
    ``max_rows``: only the file's first rows (quick runs)."""
    if group not in (1, 2):
        raise ValueError(f"census: group must be 1 or 2, got {group!r}")
    section = dict(_GROUP1 if group == 1 else _GROUP2)
    table = dict(section["table"], split={"ratio": list(fractions), "seed": seed},
                 nrows=max_rows)
    spec = parse_dataset({**section, "table": table}, path)
    data = prepare_declared(spec, cache_dir=tempfile.gettempdir(), batch_size=1 << 30)
    splits = []
    for batches in (data.train, data.val, data.test):
        x, y = batches.x, batches.targets
        splits.append(TabularDataset(x["categorical"], x["dense"], y, data.cardinalities))
    return CensusData(splits[0], splits[1], splits[2], tuple(data.tasks), data.cardinalities,
                      tuple(table["categorical"]), tuple(table["numeric"]))


def read_census(path: str | Path) -> list[np.ndarray]:
    """The raw file as its 42 columns, each an array of strings, read as configs/census.yaml
    reads it (", " separated, no header)."""
    from manytask.data.declared.options import read_options

    where = "configs/census.yaml"
    options = read_options(_GROUP1["table"], "csv", where)
    folder = Path(path)
    file = folder / FILE_NAME if folder.is_dir() else folder
    raw = read_file(file, "csv", COLUMNS, where, options=options)
    return [np.asarray(pc.fill_null(raw[c], "").to_pylist(), dtype=str) for c in COLUMNS]
