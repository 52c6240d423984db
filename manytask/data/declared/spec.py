"""The ``dataset:`` section of a configuration: files, columns, splits and tasks, validated
before any file is read.

Two shapes::

    dataset:                      # (a) one table whose rows carry every task
      table:
        file: data.csv            # or files: {train: a.csv, val: b.csv, test: c.csv}
        split: {ratio: [0.8, 0.1, 0.1], seed: 0}   # or {column: split}
        numeric: [age, income]
        categorical: [city]
        text: [question]          # one text column, or two: a pair
        tasks:
          - {name: topic, kind: classification, label: topic, metrics: [accuracy, f1_macro]}
          - {name: score, kind: regression, label: score, loss: huber}

    dataset:                      # (b) one source per task, mixed by the task sampler
      sources:
        - {file: a.csv, split: {column: split}, text: [s1, s2],
           task: {name: nli, kind: classification, label: label}}

Every error is a one-line :class:`DataError` naming where in the section it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...files import UnsafeFileError, inside
from ...registry import Param, Registry, RegistryError, did_you_mean, resolve, short
from ...tasks import Task
from .errors import DataError
from .options import (
    READ_PARAMS,
    ReadOptions,
    Sample,
    read_options,
    sample,
    split_options,
    transforms,
)

# File formats by name; the target is the list of file-name endings that select it.
FORMATS: Registry[tuple[str, ...]] = Registry("data format")
FORMATS.add("csv", (".csv", ".csv.gz"), summary="comma-separated values with a header row")
FORMATS.add("tsv", (".tsv", ".tsv.gz"), summary="tab-separated values with a header row")
FORMATS.add("jsonl", (".jsonl", ".json"), summary="JSON lines: one object per row")
FORMATS.add("parquet", (".parquet", ".pq"), summary="Apache Parquet (read with pyarrow)")
FORMATS.add("hf", (), summary="a Hugging Face datasets folder written by save_to_disk")
FORMATS.add("lines", (), summary="one row per line, its columns the named groups of pattern")

SPLITS = ("train", "val", "test")
SPLIT_PARAMS = {
    "ratio": Param("floats", None, "train/val/test shares", low=0, low_open=True, nullable=True),
    "seed": Param("int", 0, "seed of the random split", low=0),
    "column": Param("str", None, "column naming each row's split", nullable=True),
    "names": Param("strs", ("train", "val", "test"), "values (or HF splits) of train/val/test"),
    "holdout": Param("float", None, "files without val: this share of train is val",
                     low=0, high=1, low_open=True, high_open=True, nullable=True),
}
TASK_PARAMS = {
    "name": Param("str", doc="the task's name"),
    "kind": Param("choice", choices=("classification", "binary", "multilabel", "regression")),
    "label": Param("any", doc="label column (multi-label, multi-output regression: a list)"),
    "loss": Param("str", None, "loss by name (default: the kind's)", nullable=True),
    "loss_params": Param("any", None, "the loss's parameters", nullable=True),
    "metrics": Param("strs", None, "metrics by name; the first is the main one", nullable=True),
    "classes": Param("strs", None, "classification: the classes, in order (default: the "
                     "training values, sorted)", nullable=True),
    "positive": Param("strs", None, "binary: the values that are 1", nullable=True),
    "negative": Param("strs", None, "binary with positive: the values that are 0 (default: "
                      "every other value)", nullable=True),
}
TABLE_PARAMS = {
    "file": Param("str", None, "one file (or HF folder) holding every split", nullable=True),
    "files": Param("any", None, "{train: ..., val: ..., test: ...}", nullable=True),
    "format": Param("choice", None, "file format (default: from the file name)",
                    choices=(None, "csv", "tsv", "jsonl", "parquet", "hf", "lines"),
                    nullable=True),
    **READ_PARAMS,
    "transforms": Param("any", None, "{numeric column: transform}, before scaling",
                        nullable=True),
    "sample": Param("any", None, "{train: N, val: N, test: N, seed: S}: at most N rows",
                    nullable=True),
    "split": Param("any", None, "how rows are split (see above)", nullable=True),
    "numeric": Param("strs", (), "numeric feature columns"),
    "categorical": Param("strs", (), "categorical feature columns"),
    "text": Param("strs", (), "a text column, or two (a pair)"),
    "tasks": Param("any", None, "the tasks (shape a)", nullable=True),
    "task": Param("any", None, "the task (shape b)", nullable=True),
}
DATASET_PARAMS = {
    "table": Param("any", None, "shape (a): one table with every task", nullable=True),
    "defaults": Param("any", None, "keys every table or source takes unless it sets them",
                      nullable=True),
    "sources": Param("any", None, "shape (b): one source per task", nullable=True),
    "pair_encoding": Param("choice", "combine", "text pairs: [u, v, |u-v|, u*v] or one "
                           "joined sequence", choices=("combine", "joined")),
    "max_length": Param("int", None, "tokens per text (default: fits the training texts)",
                        low=8, high=512, nullable=True),
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    label: tuple[str, ...]
    loss: str | None
    loss_params: dict[str, Any]
    metrics: tuple[str, ...] | None
    classes: tuple[str, ...] | None = None
    positive: tuple[str, ...] | None = None
    negative: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    """One table: where its rows are, how they split, its feature columns and its tasks."""

    where: str
    files: dict[str, Path] | None  # one file per split
    file: Path | None  # or one file split by column or ratio
    format: str
    ratio: tuple[float, float, float] | None
    seed: int
    split_column: str | None
    split_names: tuple[str, str, str]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    text: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    read: ReadOptions = dataclasses.field(default_factory=ReadOptions)
    split_read: dict[str, ReadOptions] = dataclasses.field(default_factory=dict)
    holdout: float | None = None
    sample: Sample | None = None
    transforms: dict[str, str] = dataclasses.field(default_factory=dict)
    allow_outside: bool = False  # a datasets folder's files may link out of it

    def read_options(self, split: str | None = None) -> ReadOptions:
        """The read options of ``split``'s file (``None``: the one file)."""
        return self.split_read.get(split, self.read) if split else self.read

    def columns(self) -> tuple[str, ...]:
        """Every column the table reads (features, labels, the split column)."""
        cols = [*self.numeric, *self.categorical, *self.text]
        cols += [c for t in self.tasks for c in t.label]
        if self.split_column:
            cols.append(self.split_column)
        return tuple(dict.fromkeys(cols))

    def feature_columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical, *self.text)


@dataclass(frozen=True)
class DatasetSpec:
    shape: str  # "table" or "sources"
    tables: tuple[TableSpec, ...]
    pair_encoding: str
    max_length: int | None

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return tuple(t for table in self.tables for t in table.tasks)


def format_of(path: Path, given: str | None, where: str) -> str:
    if given:
        return given
    if path.is_dir():
        return "hf"
    name = path.name.lower()
    for entry in FORMATS.entries():
        if any(name.endswith(end) for end in entry.target):
            return entry.name
    raise DataError(f"{where}: {str(path)!r}: unknown file format (name endings: "
                    + ", ".join(e for f in FORMATS.entries() for e in f.target)
                    + "; or set format: csv|tsv|jsonl|parquet|hf)")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DataError(f"{where} must be a mapping, got {short(value)}")
    return value


def _task(value: Any, where: str) -> TaskSpec:
    p = resolve(TASK_PARAMS, _mapping(value, where), where)
    label = p["label"]
    labels = (label,) if isinstance(label, str) else label
    if (not isinstance(labels, Sequence) or not labels
            or not all(isinstance(c, str) and c for c in labels)):
        raise DataError(f"{where}: label must be a column name or a list of them, "
                        f"got {short(label)}")
    if len(labels) > 1 and p["kind"] in ("classification", "binary"):
        raise DataError(f"{where}: a {p['kind']} task has one label column, got {list(labels)}")
    params = p["loss_params"] or {}
    _mapping(params, f"{where}: loss_params")
    spec = TaskSpec(p["name"], p["kind"], tuple(labels), p["loss"], dict(params),
                    p["metrics"], p["classes"], p["positive"], p["negative"])
    _check_values(spec, where)
    # builds the task once with a placeholder width: unknown losses, metrics or parameters
    # fail here, before any file is read (class counts are checked again after reading)
    width = {"classification": 2, "binary": 1}.get(spec.kind, len(labels))
    if not (spec.kind == "classification" and spec.loss_params.get("class_weights")):
        Task.of_kind(spec.name, spec.kind, width, loss=spec.loss,
                     loss_params=spec.loss_params, metrics=spec.metrics)
    return spec


def _check_values(spec: TaskSpec, where: str) -> None:
    """``classes`` for classification, ``positive``/``negative`` for binary, no overlap."""
    if spec.classes is not None:
        if spec.kind != "classification":
            raise DataError(f"{where}: classes applies to classification tasks")
        if len(spec.classes) < 2 or len(set(spec.classes)) != len(spec.classes):
            raise DataError(f"{where}: classes must be at least 2 distinct values, got "
                            f"{short(list(spec.classes))}")
    if spec.positive is None and spec.negative is not None:
        raise DataError(f"{where}: negative needs positive (the values that are 1)")
    if spec.positive is not None:
        if spec.kind != "binary":
            raise DataError(f"{where}: positive applies to binary tasks")
        both = sorted(set(spec.positive) & set(spec.negative or ()))
        if not spec.positive or both:
            raise DataError(f"{where}: positive must be non-empty and apart from negative"
                            + (f"; {both[0]!r} is in both" if both else ""))


def _path(value: Any, root: Path, where: str, allow_outside: bool) -> Path:
    """``value`` as a path: an absolute one as given (the user's explicit choice), a relative
    one under ``root`` (data_root) and refused if it leads out of it (``..``, or a link),
    unless ``allow_outside``."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{where} must be a file name, got {short(value)}")
    path = Path(value)
    if path.is_absolute():
        return path
    try:
        return inside(root, path, what=f"{where}: {value!r} under data_root",
                      allow_outside=allow_outside,
                      hint="unless you allow links out of data_root (--allow-outside-links) "
                      "or give an absolute path")
    except UnsafeFileError as err:
        raise DataError(str(err)) from None


def _table(value: Any, root: Path, where: str, shape: str, allow_outside: bool) -> TableSpec:
    p = resolve(TABLE_PARAMS, _mapping(value, where), where)
    if shape == "table" and (p["tasks"] is None or p["task"] is not None):
        raise DataError(f"{where}: a table lists its tasks under 'tasks:'")
    if shape == "sources" and (p["task"] is None or p["tasks"] is not None):
        raise DataError(f"{where}: a source names its one task under 'task:'")
    raw_tasks = [p["task"]] if shape == "sources" else p["tasks"]
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise DataError(f"{where}: tasks must be a non-empty list, got {short(raw_tasks)}")
    tasks = tuple(_task(t, f"{where}: task {i + 1}") for i, t in enumerate(raw_tasks))
    if (p["file"] is None) == (p["files"] is None):
        raise DataError(f"{where}: give either file (split by column or ratio) or files "
                        "(one per split)")
    split = dict(_mapping(p["split"] or {}, f"{where}: split"))
    sp = resolve(SPLIT_PARAMS, split, f"{where}: split")
    files = None
    own: dict[str, dict[str, Any]] = {}
    if p["files"] is not None:
        given = _mapping(p["files"], f"{where}: files")
        need = {"train", "test"} if sp["holdout"] is not None else set(SPLITS)
        if set(given) != need:
            wanted = ", ".join(s for s in SPLITS if s in need)
            raise DataError(f"{where}: files needs exactly {wanted}"
                            + (" (split: holdout carves val out of train)"
                               if sp["holdout"] is not None else "")
                            + f", got {sorted(given)}")
        files = {}
        for s in SPLITS:
            if s not in given:
                continue
            entry = given[s]
            if isinstance(entry, Mapping):  # {file: ..., header: false}: its own options
                entry = dict(entry)
                name = entry.pop("file", None)
                own[s] = entry
                entry = name
            files[s] = _path(entry, root, f"{where}: files: {s}", allow_outside)
        first = files["train"]
        if sp["ratio"] or sp["column"]:
            raise DataError(f"{where}: files are the splits; drop split:")
    else:
        if sp["holdout"] is not None:
            raise DataError(f"{where}: split: holdout applies to files: {{train, test}}")
        first = _path(p["file"], root, f"{where}: file", allow_outside)
    fmt = format_of(first, p["format"], where)
    read = read_options(p, fmt, where)
    split_read = {s: split_options(read, o, fmt, f"{where}: files: {s}")
                  for s, o in own.items()}
    ratio = sp["ratio"]
    if ratio is not None and (len(ratio) != 3 or abs(sum(ratio) - 1) > 1e-6):
        raise DataError(f"{where}: split: ratio must be three shares summing to 1, got "
                        f"{list(ratio)}")
    if files is None and fmt != "hf" and ratio is None and sp["column"] is None:
        raise DataError(f"{where}: one file needs split: {{column: NAME}} or "
                        "{ratio: [train, val, test]}")
    if ratio is not None and sp["column"] is not None:
        raise DataError(f"{where}: split: give column or ratio, not both")
    if len(sp["names"]) != 3:
        raise DataError(f"{where}: split: names must be three values (train, val, test)")
    if len(p["text"]) > 2:
        raise DataError(f"{where}: text takes one column or a pair, got {list(p['text'])}")
    features = [*p["numeric"], *p["categorical"], *p["text"]]
    if not features:
        raise DataError(f"{where}: no feature column (numeric, categorical or text)")
    twice = sorted({c for c in features if features.count(c) > 1})
    if twice:
        raise DataError(f"{where}: column(s) {twice} listed twice among the features")
    for t in tasks:
        clash = sorted(set(t.label) & set(features))
        if clash:
            raise DataError(f"{where}: task {t.name!r}: label column {clash[0]!r} is also a "
                            "feature")
    return TableSpec(where, files, None if files else first, fmt,
                     None if ratio is None else (ratio[0], ratio[1], ratio[2]), sp["seed"],
                     sp["column"], (sp["names"][0], sp["names"][1], sp["names"][2]),
                     tuple(p["numeric"]), tuple(p["categorical"]), tuple(p["text"]), tasks,
                     read, split_read, sp["holdout"], sample(p["sample"], f"{where}: sample"),
                     transforms(p["transforms"], tuple(p["numeric"]), f"{where}: transforms"),
                     allow_outside)


def parse_dataset(value: Any, root: str | Path = ".", *,
                  allow_outside_links: bool = False) -> DatasetSpec:
    """Validate the ``dataset:`` section (relative file names are under ``root`` and may not
    lead out of it, through ``..`` or a link, unless ``allow_outside_links``)."""
    try:
        p = resolve(DATASET_PARAMS, _mapping(value, "dataset"), "dataset")
        if (p["table"] is None) == (p["sources"] is None):
            raise DataError("dataset: give either table: (shape a) or sources: (shape b)")
        root = Path(root)
        defaults = dict(_mapping(p["defaults"] or {}, "dataset: defaults"))
        resolve({k: v for k, v in TABLE_PARAMS.items() if k not in ("task", "tasks")},
                defaults, "dataset: defaults")

        def one(value: Any, where: str, shape: str) -> TableSpec:
            return _table({**defaults, **_mapping(value, where)}, root, where, shape,
                          allow_outside_links)

        if p["table"] is not None:
            tables: tuple[TableSpec, ...] = (one(p["table"], "dataset: table", "table"),)
            shape = "table"
        else:
            if not isinstance(p["sources"], list) or not p["sources"]:
                raise DataError("dataset: sources must be a non-empty list")
            tables = tuple(one(s, f"dataset: source {i + 1}", "sources")
                           for i, s in enumerate(p["sources"]))
            shape = "sources"
    except RegistryError as err:
        raise DataError(str(err)) from None
    names = [t.name for table in tables for t in table.tasks]
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"dataset: two tasks are named {name!r}")
    if shape == "sources":
        first = tables[0]
        width = text_width(first.text, p["pair_encoding"])
        for table in tables[1:]:
            if (table.numeric, table.categorical, table.transforms,
                    text_width(table.text, p["pair_encoding"])) != (
                    first.numeric, first.categorical, first.transforms, width):
                raise DataError(f"{table.where}: every source needs the same numeric and "
                                "categorical columns and as many text embeddings as source 1 "
                                "(they share one model input)")
    return DatasetSpec(shape, tables, p["pair_encoding"], p["max_length"])


def text_width(text: tuple[str, ...], pair_encoding: str) -> int:
    """Sentence embeddings per row: none, one (a text, or a joined pair) or four (a pair
    combined as [u, v, |u-v|, u*v])."""
    if not text:
        return 0
    return 4 if len(text) == 2 and pair_encoding == "combine" else 1


def select_tasks(spec: DatasetSpec, names: Sequence[str]) -> DatasetSpec:
    """``spec`` with only the tasks ``names`` (a single-task baseline, a task group)."""
    known = [t.name for t in spec.tasks]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"tasks: {unknown[0]!r} is not a task of the dataset: section"
                        f"{did_you_mean(unknown[0], known)}; tasks: {', '.join(known)}")
    tables = []
    for table in spec.tables:
        kept = tuple(t for t in table.tasks if t.name in names)
        if kept:
            tables.append(dataclasses.replace(table, tasks=kept))
    return dataclasses.replace(spec, tables=tuple(tables))


__all__ = ["FORMATS", "DataError", "DatasetSpec", "TableSpec", "TaskSpec",
           "did_you_mean",
           "format_of", "parse_dataset", "select_tasks"]
