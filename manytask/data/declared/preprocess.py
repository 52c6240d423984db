"""Fitted preprocessing: numeric scaling, categorical vocabularies and label classes, learnt
from the training split only and saved with the run as JSON.

* numeric feature x -> (f(x) - mean) / std with the training rows' mean and standard
  deviation of f(x) (std 0 -> 1), f the column's transform (``transforms:``, default the
  identity); a missing value becomes 0 (the training mean);
* categorical feature -> code 1..n of its value in the training vocabulary (sorted), 0 for a
  value never seen in training or missing (the out-of-vocabulary bucket);
* classification label -> index of its class among the declared ``classes`` or else the
  training classes (sorted, numerically when they are integers); binary and multi-label
  labels -> 0/1 floats (binary with ``positive``: 1 for those values, 0 for ``negative`` or
  any other value); regression labels stay floats; a missing label is -1 (classification)
  or NaN (the others), as :mod:`manytask.tasks` expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from ...files import UnsafeFileError, parse_json
from ...registry import short
from ...tasks import Task
from .columns import (
    Problem,
    binary,
    binary_of,
    codes,
    first_problem,
    not_integral,
    problems,
    sorted_vocabulary,
    to_float,
    to_text,
)
from .options import TRANSFORMS, ReadOptions
from .read import SplitRows
from .spec import DataError, TaskSpec

VERSION = 1


@dataclass
class Converted:
    """One split's arrays, the rows that could not be used and why."""

    categorical: Tensor
    dense: Tensor
    targets: dict[str, Tensor]
    bad: np.ndarray
    problems: list[Problem] = field(default_factory=list)


class Features:
    """Scaling of the numeric columns and vocabularies of the categorical ones."""

    def __init__(self, numeric: dict[str, tuple[float, float]],
                 vocabularies: dict[str, list[str]],
                 transforms: dict[str, str] | None = None) -> None:
        self.numeric = numeric
        self.vocabularies = vocabularies
        self.transforms = dict(transforms or {})

    def values(self, part: SplitRows, col: str) -> tuple[np.ndarray, np.ndarray]:
        """A numeric column's values after its transform, and the mask of non-numbers."""
        values, bad = to_float(part.table[col])
        if col in self.transforms:
            values = TRANSFORMS.get(self.transforms[col])(values)
        return values, bad

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(len(v) + 1 for v in self.vocabularies.values())

    @classmethod
    def fit(cls, numeric: Sequence[str], categorical: Sequence[str],
            train: Sequence[SplitRows], transforms: dict[str, str] | None = None) -> Features:
        """Fit on the training rows of every table (a shared input for all sources)."""
        stats = {}
        shape = cls({}, {}, transforms)
        for col in numeric:
            parts = []
            for part in train:
                values, bad = shape.values(part, col)
                if bad.any():
                    raise DataError(str(first_problem(bad, part.table[col], part.file,
                                                      part.rows, col, "not a number")))
                parts.append(values)
            values = np.concatenate(parts)
            known = values[~np.isnan(values)]
            if known.size == 0:
                raise DataError(f"{train[0].file}: column {col!r} has no value in the "
                                "training split")
            std = float(known.std())
            stats[col] = (float(known.mean()), std if std > 0 else 1.0)
        vocab = {}
        for col in categorical:
            merged = pa.chunked_array([to_text(p.table[col]) for p in train], pa.string())
            vocab[col] = sorted_vocabulary(merged.combine_chunks())
        return cls(stats, vocab, transforms)

    def transform(self, part: SplitRows, strict: bool) -> tuple[Tensor, Tensor, np.ndarray,
                                                                list[Problem]]:
        n = len(part)
        bad = np.zeros(n, dtype=bool)
        found: list[Problem] = []
        dense = np.zeros((n, len(self.numeric)), dtype=np.float32)
        for j, (col, (mean, std)) in enumerate(self.numeric.items()):
            values, wrong = self.values(part, col)
            if wrong.any():
                if strict:
                    raise DataError(str(first_problem(wrong, part.table[col], part.file,
                                                      part.rows, col, "not a number")))
                found += problems(wrong, part.table[col], part.file, part.rows, col,
                                  "not a number")
                bad |= wrong
            scaled = (values - mean) / std
            dense[:, j] = np.where(np.isfinite(scaled), scaled, 0.0)
        cat = np.zeros((n, len(self.vocabularies)), dtype=np.int64)
        for j, (col, vocab) in enumerate(self.vocabularies.items()):
            cat[:, j] = codes(to_text(part.table[col]), vocab) + 1  # -1 (unseen) -> 0
        return torch.from_numpy(cat), torch.from_numpy(dense), bad, found


class Labels:
    """A task's label columns -> its targets; classes fitted on the training split."""

    def __init__(self, spec: TaskSpec, classes: list[str] | None = None) -> None:
        self.spec = spec
        self.classes = classes

    @classmethod
    def fit(cls, spec: TaskSpec, train: SplitRows) -> Labels:
        col = spec.label[0]
        if spec.kind != "classification":
            labels = cls(spec)
            targets = labels.transform(train, strict=True)[0]
            if bool(torch.isnan(targets).all()):
                raise DataError(f"{train.file}: task {spec.name!r}: no labelled row in the "
                                f"training split (column {col!r})")
            return labels
        values = train.table[col]
        wrong = not_integral(values)
        if wrong.any():
            raise DataError(str(first_problem(wrong, values, train.file, train.rows, col,
                                              "a number with a fraction is not a class label")))
        if spec.classes is not None:
            labels = cls(spec, list(spec.classes))
            labels.transform(train, strict=True)  # a value outside the classes: its row
            return labels
        classes = sorted_vocabulary(to_text(values))
        if len(classes) < 2:
            raise DataError(f"{train.file}: column {col!r}: task {spec.name!r} needs at least "
                            f"2 classes in the training split, found {classes}")
        return cls(spec, classes)

    def task(self) -> Task:
        width = len(self.classes) if self.classes is not None else len(self.spec.label)
        if self.spec.kind == "binary":
            width = 1
        return Task.of_kind(self.spec.name, self.spec.kind, width, loss=self.spec.loss,
                            loss_params=self.spec.loss_params, metrics=self.spec.metrics)

    def transform(self, part: SplitRows, strict: bool) -> tuple[Tensor, np.ndarray,
                                                               list[Problem]]:
        n = len(part)
        bad = np.zeros(n, dtype=bool)
        found: list[Problem] = []

        def flag(wrong: np.ndarray, col: str, why: str) -> None:
            nonlocal bad
            if not wrong.any():
                return
            if strict:
                raise DataError(str(first_problem(wrong, part.table[col], part.file,
                                                  part.rows, col, why)))
            found.extend(problems(wrong, part.table[col], part.file, part.rows, col, why))
            bad = bad | wrong

        if self.spec.kind == "classification":
            col = self.spec.label[0]
            assert self.classes is not None
            text = to_text(part.table[col])
            index = codes(text, self.classes)
            null = np.asarray(text.is_null().to_numpy(zero_copy_only=False))
            flag(not_integral(part.table[col]), col,
                 "a number with a fraction is not a class label")
            flag((index < 0) & ~null & ~bad, col,
                 f"not one of the declared classes (task {self.spec.name!r})"
                 if self.spec.classes is not None else
                 f"a class never seen in training (task {self.spec.name!r})")
            return torch.from_numpy(np.where(bad, -1, index)), bad, found
        columns = []
        for col in self.spec.label:
            if self.spec.kind == "regression":
                values, wrong = to_float(part.table[col])
                flag(wrong, col, "not a number (regression label)")
            elif self.spec.positive is not None:
                values, wrong = binary_of(part.table[col], self.spec.positive,
                                          self.spec.negative)
                flag(wrong, col, f"neither positive {list(self.spec.positive)} nor negative "
                     f"{list(self.spec.negative or ())}")
            else:
                values, wrong = binary(part.table[col])
                flag(wrong, col, f"not a {self.spec.kind} label 0/1 or true/false")
            columns.append(np.where(wrong, np.nan, values).astype(np.float32))
        stacked = np.stack(columns, axis=1)
        if self.spec.kind == "binary" or (self.spec.kind == "regression" and len(columns) == 1):
            stacked = stacked[:, 0]
        return torch.from_numpy(np.ascontiguousarray(stacked)), bad, found


def _values(spec: TaskSpec) -> dict[str, list[str] | None]:
    """A task's declared values, saved so that predict reads labels as training did."""
    return {k: None if v is None else list(v) for k, v in (
        ("declared_classes", spec.classes), ("positive", spec.positive),
        ("negative", spec.negative))}


class Preprocessor:
    """Everything fitted on the training split, for one data set (every table)."""

    def __init__(self, features: Features, labels: dict[str, Labels],
                 text: dict[str, Any] | None = None,
                 read: dict[str, Any] | None = None) -> None:
        self.features = features
        self.labels = labels
        self.text = text or {}  # text columns' encoding: columns, max_length, pair mode
        # how the training files were read: {"format": ..., "options": ReadOptions fields}
        self.read = read or {}

    def read_as_trained(self, fmt: str | None) -> tuple[str, ReadOptions]:
        """The format and read options for a new file of format ``fmt`` (``None``: its name
        does not tell): the training files' options when the format is theirs, every row."""
        trained = self.read.get("format")
        fmt = fmt or trained
        if fmt is None:
            raise DataError("the file name does not tell its format (.csv, .tsv, .jsonl, "
                            ".parquet)")
        if fmt != trained:
            return fmt, ReadOptions()
        given: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                 for k, v in (self.read.get("options") or {}).items()}
        try:
            options = ReadOptions(**given)
        except TypeError as err:
            raise DataError(f"preprocessing.json: read options {given}: {err}") from None
        return fmt, dataclasses.replace(options, nrows=None)

    def tasks(self) -> list[Task]:
        return [label.task() for label in self.labels.values()]

    def convert(self, part: SplitRows, tasks: Sequence[str], strict: bool = True,
                with_labels: bool = True) -> Converted:
        cat, dense, bad, found = self.features.transform(part, strict)
        targets = {}
        if with_labels:
            for name in tasks:
                y, wrong, more = self.labels[name].transform(part, strict)
                targets[name] = y
                bad = bad | wrong
                found += more
        return Converted(cat, dense, targets, bad, found)

    def to_json(self) -> str:
        return json.dumps({
            "version": VERSION,
            "numeric": {c: list(ms) for c, ms in self.features.numeric.items()},
            "categorical": self.features.vocabularies,
            "transforms": self.features.transforms,
            "tasks": [{"name": lab.spec.name, "kind": lab.spec.kind,
                       "label": list(lab.spec.label), "loss": lab.spec.loss,
                       "loss_params": lab.spec.loss_params,
                       "metrics": None if lab.spec.metrics is None else list(lab.spec.metrics),
                       "classes": lab.classes, **_values(lab.spec)}
                      for lab in self.labels.values()],
            "text": self.text,
            "read": self.read,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> Preprocessor:
        """The preprocessing saved by :meth:`to_json`, checked: bounded JSON, every scale
        finite (a std > 0), every vocabulary and class list of text."""
        try:
            state = parse_json(text, where=where)
            if not isinstance(state, dict):
                raise DataError(f"{where}: not a preprocessing file of manytask (a JSON "
                                f"{type(state).__name__}, not an object)")
            if state.get("version") != VERSION:
                raise DataError(f"{where}: preprocessing version {short(state.get('version'))}, "
                                f"expected {VERSION}")
            numeric = {str(c): (float(m), float(s)) for c, (m, s) in state["numeric"].items()}
            for c, (m, s) in numeric.items():
                if not (math.isfinite(m) and math.isfinite(s) and s > 0):
                    raise DataError(f"{where}: column {c!r}: scaling ({m}, {s}) is not a "
                                    "finite mean and a positive standard deviation")
            features = Features(numeric, {str(c): _texts(vocab, f"{where}: column {c!r}")
                                          for c, vocab in state["categorical"].items()},
                                {str(c): str(f) for c, f in
                                 (state.get("transforms") or {}).items()})
            labels = {}
            for t in state["tasks"]:
                spec = TaskSpec(str(t["name"]), t["kind"], tuple(t["label"]), t["loss"],
                                dict(t["loss_params"] or {}),
                                None if t["metrics"] is None else tuple(t["metrics"]),
                                *(None if t.get(k) is None else tuple(t[k])
                                  for k in ("declared_classes", "positive", "negative")))
                classes = (None if t["classes"] is None
                           else _texts(t["classes"], f"{where}: task {spec.name!r}"))
                labels[spec.name] = Labels(spec, classes)
            text_state = state.get("text") or {}
            if not isinstance(text_state, dict):
                raise DataError(f"{where}: text is {short(text_state)}, not a mapping")
            pre = cls(features, labels, text_state, state.get("read") or {})
            pre.tasks()  # every task buildable (its kind, loss and metrics known)
            return pre
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, DataError):
                raise
            if isinstance(err, UnsafeFileError):
                raise DataError(str(err)) from None
            raise DataError(f"{where}: not a preprocessing file of manytask "
                            f"({type(err).__name__}: {short(str(err), 240)})") from None


def _texts(values: Any, where: str) -> list[str]:
    """A saved vocabulary or class list: a list of text values."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where}: {short(values)} is not a list of text values")
    return values
