"""Text sources as TextTasks for fine-tuning the encoder's top layers (finetune_layers with
data: files): every split's texts and labels as written, a pair joined, a regression label a
float; the shapes fine-tuning cannot take are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from manytask.data.declared import DataError, parse_dataset
from manytask.data.declared.build import declared_text_tasks


def _write(root: Path) -> None:
    parts = ["train", "val", "test"]
    (root / "a.tsv").write_text("".join(f"s{i}\t{'xy'[i % 2]}\t{parts[i % 3]}\n"
                                        for i in range(12)))
    (root / "b.csv").write_text("p,q,score,part\n" + "".join(
        f"p{i},q{i},{i / 4},{parts[i % 3]}\n" for i in range(9)))


SOURCES = [
    {"file": "a.tsv", "header": False, "columns": ["t", "y", "part"], "text": ["t"],
     "split": {"column": "part"}, "task": {"name": "a", "kind": "classification", "label": "y"}},
    {"file": "b.csv", "text": ["p", "q"], "split": {"column": "part"},
     "task": {"name": "b", "kind": "regression", "label": "score"}},
]


def test_sources_become_text_tasks(tmp_path: Path) -> None:
    _write(tmp_path)
    spec = parse_dataset({"sources": SOURCES, "pair_encoding": "joined", "max_length": 16},
                         tmp_path)
    tasks, pre, max_length = declared_text_tasks(spec, tmp_path / "cache")
    assert max_length == 16 and [t.name for t in tasks] == ["a", "b"]
    a, b = tasks
    assert a.task().kind == "classification" and b.task().kind == "regression"
    assert a.train.texts == ("s0", "s3", "s6", "s9")
    assert a.train.labels.tolist() == [0, 1, 0, 1]  # classes x, y
    assert b.test.texts == (("p2", "q2"), ("p5", "q5"), ("p8", "q8"))
    assert b.test.labels.dtype == torch.float32
    assert b.test.labels.tolist() == [0.5, 1.25, 2.0]  # a similarity keeps its fraction
    assert pre.labels["a"].classes == ["x", "y"]


@pytest.mark.parametrize(("change", "message"), [
    ({"sources": SOURCES[1:], "pair_encoding": "combine"}, "set pair_encoding: joined"),
    ({"sources": [{**SOURCES[0], "numeric": ["part"]}]}, "text columns only"),
])
def test_shapes_fine_tuning_cannot_take(tmp_path: Path, change: dict,  # type: ignore[type-arg]
                                        message: str) -> None:
    _write(tmp_path)
    section = {"sources": SOURCES, "pair_encoding": "joined", "max_length": 16, **change}
    with pytest.raises(DataError, match=message):
        declared_text_tasks(parse_dataset(section, tmp_path), tmp_path / "cache")
    table = {"table": {**SOURCES[0], "task": None, "tasks": [SOURCES[0]["task"]]}}
    with pytest.raises(DataError, match="not one table"):
        declared_text_tasks(parse_dataset(table, tmp_path), tmp_path / "cache")
