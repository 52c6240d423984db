"""Read options of the files route (header, columns, quoting, skip_initial_space, na_values,
encoding, the lines format), per-split file options, holdout, sample, transforms, declared
classes and binary positive/negative values: each on a small file written here, each
checked against the values written, and each misuse refused before any file is read."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from manytask.data.declared import DataError, parse_dataset, prepare_declared
from manytask.data.declared.preprocess import Labels, Preprocessor
from manytask.data.declared.read import SplitRows, read_file, read_splits


def _splits(section: dict[str, Any], root: Path) -> dict[str, Any]:
    return read_splits(parse_dataset({"table": section}, root).tables[0])


def _task(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "y", "kind": "classification", "label": "y", **extra}]


def test_headerless_file_with_quotes_as_data(tmp_path: Path) -> None:
    # a quote opening a field would swallow the tabs and lines up to the next quote
    (tmp_path / "a.tsv").write_text('0\t"so-called" good\n1\tit\'s 5" long\n0\t"\n1\tok\n')
    section = {"file": "a.tsv", "header": False, "columns": ["y", "t"], "quoting": "none",
               "split": {"ratio": [0.5, 0.25, 0.25]}, "text": ["t"], "tasks": _task()}
    parts = _splits(section, tmp_path)
    rows = sorted((r for p in parts.values() for r in p.table.to_pylist()),
                  key=lambda r: r["t"])
    assert [r["t"] for r in rows] == ['"', '"so-called" good', "it's 5\" long", "ok"]
    with pytest.raises(DataError):  # standard quoting cannot read this file
        _splits({**section, "quoting": "standard"}, tmp_path)


def test_header_row_replaced_by_columns_and_a_split_file_without_it(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b\n1,x\n2,y\n")
    (tmp_path / "val.csv").write_text("3,x\n")  # no header row
    (tmp_path / "test.csv").write_text("a,b\n4,y\n")
    section = {"files": {"train": "train.csv", "val": {"file": "val.csv", "header": False},
                         "test": "test.csv"},
               "columns": ["n", "y"], "numeric": ["n"], "tasks": _task()}
    parts = _splits(section, tmp_path)
    assert {s: p.table.to_pylist() for s, p in parts.items()} == {
        "train": [{"n": "1", "y": "x"}, {"n": "2", "y": "y"}], "val": [{"n": "3", "y": "x"}],
        "test": [{"n": "4", "y": "y"}]}


def test_comma_space_separated_gzip_with_na_values_and_latin1(tmp_path: Path) -> None:
    lines = ["1, caf\xe9, ?, 50000+.", "2, ?, 3, - 50000.", "3, bar, 4, - 50000.",
             "4, bar, 5, 50000+."]
    with gzip.open(tmp_path / "c.data.gz", "wb") as f:
        f.write("\n".join(lines).encode("latin-1"))
    section = {"file": "c.data.gz", "format": "csv", "header": False,
               "columns": ["id", "city", "n", "income"], "skip_initial_space": True,
               "na_values": ["?"], "encoding": "latin-1", "split": {"column": "id",
                                                                   "names": ["1", "2", "3"]},
               "numeric": ["id", "n"], "categorical": ["city"],
               "tasks": [{"name": "rich", "kind": "binary", "label": "income",
                          "positive": ["50000+."], "negative": ["- 50000."]}]}
    with pytest.raises(DataError, match=r"row 4, column 'id'"):  # '4' is no split name
        _splits(section, tmp_path)
    section["split"] = {"ratio": [0.5, 0.25, 0.25]}
    parts = _splits(section, tmp_path)
    rows = {r["id"]: r for p in parts.values() for r in p.table.to_pylist()}
    assert rows["1"] == {"id": "1", "city": "caf\xe9", "n": None, "income": "50000+."}
    assert rows["2"]["city"] is None and rows["2"]["income"] == "- 50000."
    labels = Labels.fit(parse_dataset({"table": section}, tmp_path).tasks[0], parts["train"])
    for part in parts.values():
        y = labels.transform(part, strict=True)[0]
        want = [1.0 if r["income"] == "50000+." else 0.0 for r in part.table.to_pylist()]
        assert y.tolist() == want


def test_binary_positive_alone_makes_every_other_value_zero(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("s,x\nNever married,1\nMarried,2\n,3\nDivorced,4\n")
    spec = parse_dataset({"table": {"file": "m.csv", "split": {"ratio": [0.5, 0.25, 0.25]},
                                    "numeric": ["x"], "tasks": [{"name": "nm", "kind": "binary",
                                    "label": "s", "positive": ["Never married"]}]}}, tmp_path)
    whole = read_file(tmp_path / "m.csv", "csv", ("s", "x"), "here")
    y, bad, _ = Labels(spec.tasks[0]).transform(SplitRows(whole, "m.csv", np.arange(1, 5)),
                                                strict=True)
    np.testing.assert_array_equal(y.numpy(), [1.0, 0.0, np.nan, 0.0])  # empty: missing
    assert not bad.any()


def test_negative_values_refuse_any_other_value(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("s,x,p\nyes,1,train\nno,2,val\nmaybe,3,train\nno,4,test\n")
    section = {"table": {"file": "m.csv", "split": {"column": "p"}, "numeric": ["x"],
                         "tasks": [{"name": "b", "kind": "binary", "label": "s",
                                    "positive": ["yes"], "negative": ["no"]}]}}
    with pytest.raises(DataError, match=r"m.csv: row 3, column 's': neither positive"):
        prepare_declared(parse_dataset(section, tmp_path), cache_dir=tmp_path, batch_size=4)


def test_lines_format_columns_are_the_patterns_named_groups(tmp_path: Path) -> None:
    (tmp_path / "q.label").write_text("HUM:ind Who was he ?\n\nNUM:date When  was it ?\n"
                                      "LOC:city Where ?\nHUM:gr Which team ?\n")
    pattern = r"^(?P<fine>(?P<y>[^: ]+):[^ ]+) (?P<t>.*)$"
    section = {"file": "q.label", "format": "lines", "pattern": pattern,
               "split": {"ratio": [0.5, 0.25, 0.25]}, "text": ["t"], "tasks": _task()}
    rows = [r for p in _splits(section, tmp_path).values() for r in p.table.to_pylist()]
    assert sorted((r["y"], r["t"]) for r in rows) == [
        ("HUM", "Which team ?"), ("HUM", "Who was he ?"), ("LOC", "Where ?"),
        ("NUM", "When  was it ?")]
    (tmp_path / "q.label").write_text("HUM:ind Who ?\nno label here\n")
    with pytest.raises(DataError, match=r"q.label: row 2 does not match pattern"):
        _splits(section, tmp_path)


def test_holdout_and_sample_draw_fixed_rows_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "tr.csv").write_text("n,y\n" + "".join(f"{i},{i % 2}\n" for i in range(50)))
    (tmp_path / "te.csv").write_text("n,y\n" + "".join(f"{i},{i % 2}\n" for i in range(50, 60)))
    section = {"files": {"train": "tr.csv", "test": "te.csv"},
               "split": {"holdout": 0.2, "seed": 3}, "numeric": ["n"], "tasks": _task()}
    parts = _splits(section, tmp_path)
    order = np.random.default_rng(3).permutation(50)
    assert parts["val"].rows.tolist() == sorted(order[:10] + 1)
    assert parts["train"].rows.tolist() == sorted(order[10:] + 1)
    sampled = _splits({**section, "sample": {"train": 7, "test": 4, "seed": 1}}, tmp_path)
    keep = np.sort(np.random.default_rng([1, 0]).choice(40, 7, replace=False))
    assert sampled["train"].rows.tolist() == parts["train"].rows[keep].tolist()
    assert len(sampled["val"]) == 10 and len(sampled["test"]) == 4
    assert sampled["test"].rows.tolist() == sorted(sampled["test"].rows.tolist())


def test_transforms_apply_before_the_scaling_and_are_saved(tmp_path: Path) -> None:
    values = [0.0, 9.0, 99.0, -5.0, 999.0, 3.0]
    (tmp_path / "m.csv").write_text("v,y,p\n" + "".join(
        f"{v},{i % 2},{'train' if i < 4 else 'val' if i == 4 else 'test'}\n"
        for i, v in enumerate(values)))
    section = {"table": {"file": "m.csv", "split": {"column": "p"}, "numeric": ["v"],
                         "transforms": {"v": "log1p"}, "tasks": _task()}}
    data = prepare_declared(parse_dataset(section, tmp_path), cache_dir=tmp_path, batch_size=8)
    logged = np.log1p(np.clip(values[:4], 0, None))
    mean, std = data.preprocessor.features.numeric["v"]
    assert (mean, std) == pytest.approx((logged.mean(), logged.std()))
    x, _ = next(iter(data.test))
    assert float(x["dense"][0, 0]) == pytest.approx((np.log1p(3.0) - mean) / std, rel=1e-5)
    again = Preprocessor.from_json(data.preprocessor.to_json(), "here")
    assert again.features.transforms == {"v": "log1p"}


def test_declared_classes_fix_the_order_and_refuse_others(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("y,x,p\nb,1,train\na,2,train\nb,3,val\na,4,test\n")
    section = {"table": {"file": "m.csv", "split": {"column": "p"}, "numeric": ["x"],
                         "tasks": _task(classes=["b", "a", "c"])}}
    data = prepare_declared(parse_dataset(section, tmp_path), cache_dir=tmp_path, batch_size=8)
    assert data.tasks[0].out_features == 3  # c never occurs, but was declared
    assert torch.cat([y["y"] for _, y in data.test]).tolist() == [1]  # 'a' is class 1
    (tmp_path / "m.csv").write_text("y,x,p\nb,1,train\nd,2,train\nb,3,val\na,4,test\n")
    with pytest.raises(DataError, match=r"row 2, column 'y': not one of the declared classes"):
        prepare_declared(parse_dataset(section, tmp_path), cache_dir=tmp_path, batch_size=8)


def test_defaults_apply_to_every_source_unless_it_sets_the_key(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.tsv").write_text("".join(f"{i % 2}\t{name}{i}\n" for i in range(8)))
    spec = parse_dataset({
        "defaults": {"format": "tsv", "header": False, "columns": ["y", "t"], "text": ["t"],
                     "split": {"ratio": [0.5, 0.25, 0.25]}},
        "sources": [{"file": "a.tsv", "task": _task()[0]},
                    {"file": "b.tsv", "split": {"ratio": [0.75, 0.125, 0.125]},
                     "task": {**_task()[0], "name": "z"}}]}, tmp_path)
    assert [t.ratio for t in spec.tables] == [(0.5, 0.25, 0.25), (0.75, 0.125, 0.125)]
    assert all(t.read.columns == ("y", "t") and not t.read.header for t in spec.tables)


BAD = {
    "header false without columns": ({"header": False}, "header: false needs columns"),
    "two-character delimiter": ({"delimiter": ", "}, "must be one character"),
    "unknown encoding": ({"encoding": "klingon"}, "encoding 'klingon' is unknown"),
    "pattern on a csv file": ({"pattern": "(?P<a>.)"}, "pattern applies to format lines"),
    "unknown transform": ({"transforms": {"x": "log2"}}, "unknown numeric transform 'log2'"),
    "transform of a non-numeric column": ({"transforms": {"y": "log1p"}}, "not a numeric"),
    "quoting misspelt": ({"quoting": "nope"}, "quoting must be one of"),
    "sample of zero rows": ({"sample": {"train": 0}}, "sample: train must be >= 1"),
    "holdout with one file": ({"split": {"holdout": 0.1}}, "holdout applies to files"),
    "classes on a binary task": ({"tasks": [{"name": "y", "kind": "binary", "label": "y",
                                             "classes": ["a", "b"]}]}, "classes applies"),
    "positive on classification": ({"tasks": _task(positive=["a"])}, "positive applies"),
    "negative without positive": ({"tasks": [{"name": "y", "kind": "binary", "label": "y",
                                              "negative": ["a"]}]}, "negative needs positive"),
    "value both positive and negative": (
        {"tasks": [{"name": "y", "kind": "binary", "label": "y", "positive": ["a"],
                    "negative": ["a"]}]}, "'a' is in both"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_misused_options_are_one_line_errors_before_reading(tmp_path: Path, case: str) -> None:
    change, message = BAD[case]
    section = {"file": "absent.csv", "split": {"ratio": [0.8, 0.1, 0.1]}, "numeric": ["x"],
               "tasks": _task(), **change}
    with pytest.raises(DataError, match=message) as info:
        parse_dataset({"table": section}, tmp_path)  # the file does not exist: never read
    assert "\n" not in str(info.value)


def test_lines_format_needs_a_pattern_with_named_groups(tmp_path: Path) -> None:
    base = {"file": "q.label", "format": "lines", "split": {"ratio": [0.8, 0.1, 0.1]},
            "text": ["t"], "tasks": _task()}
    with pytest.raises(DataError, match="needs pattern"):
        parse_dataset({"table": base}, tmp_path)
    with pytest.raises(DataError, match="no named group"):
        parse_dataset({"table": {**base, "pattern": "(.*) (.*)"}}, tmp_path)
    with pytest.raises(DataError, match="not a regular expression"):
        parse_dataset({"table": {**base, "pattern": "(?P<t>"}}, tmp_path)
    with pytest.raises(DataError, match="quoting applies to csv and tsv"):
        parse_dataset({"table": {**base, "pattern": "(?P<t>.*)", "quoting": "none"}}, tmp_path)
