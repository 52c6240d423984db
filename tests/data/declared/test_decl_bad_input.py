"""Bad input: one line naming file, column and row; nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from declared_tables import TASKS, table_section, write

from manytask.cli import main
from manytask.data.declared import DataError, parse_dataset, prepare_declared


def _run(section: dict, root: Path) -> None:  # type: ignore[type-arg]
    prepare_declared(parse_dataset(section, root), cache_dir=root / "cache", batch_size=8)


def _replace(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = table[column].to_pylist()
    values[row - 1] = value
    return table.set_column(table.schema.get_field_index(column), column,
                            pa.array([None if v is None else str(v) for v in values]))


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_column(tmp_path: Path, shop: pa.Table) -> None:
    write(shop, tmp_path / "d.csv")
    section = table_section("d.csv", numeric=["x1", "x9"])
    with pytest.raises(DataError) as err:
        _run(section, tmp_path)
    assert "d.csv" in _one_line(err) and "'x9' does not exist" in str(err.value)


def test_float_in_a_classification_column(tmp_path: Path, shop: pa.Table) -> None:
    write(_replace(shop, "segment", 4, 2.5), tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"d\.csv: row 4, column 'segment': a number with a "
                                        r"fraction is not a class label, got '2\.5'") as err:
        _run(table_section("d.csv"), tmp_path)
    _one_line(err)


def test_text_in_a_regression_column(tmp_path: Path, shop: pa.Table) -> None:
    write(_replace(shop, "price", 7, "cheap"), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: row 7, column 'price': not a number"):
        _run(table_section("d.parquet"), tmp_path)


def test_text_in_a_numeric_feature(tmp_path: Path, shop: pa.Table) -> None:
    write(_replace(shop, "x2", 3, "n/a?"), tmp_path / "d.tsv")
    with pytest.raises(DataError, match=r"d\.tsv: row 3, column 'x2': not a number"):
        _run(table_section("d.tsv"), tmp_path)


def test_class_never_seen_in_training(tmp_path: Path, shop: pa.Table) -> None:
    test_row = shop["part"].to_pylist().index("test") + 1
    write(_replace(shop, "segment", test_row, "giant"), tmp_path / "d.csv")
    with pytest.raises(DataError, match=rf"d\.csv: row {test_row}, column 'segment': a class "
                                        "never seen in training"):
        _run(table_section("d.csv"), tmp_path)


def test_empty_split(tmp_path: Path, shop: pa.Table) -> None:
    table = shop.set_column(shop.schema.get_field_index("part"), "part",
                            pa.array(["train" if p == "val" else p
                                      for p in shop["part"].to_pylist()]))
    write(table, tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"d\.csv: split 'val' is empty"):
        _run(table_section("d.csv"), tmp_path)


def test_two_tasks_with_one_name(tmp_path: Path) -> None:
    section = table_section("d.csv")
    section["table"]["tasks"].append(dict(TASKS[0], label="price",  # type: ignore[index]
                                          kind="regression", metrics=None))
    with pytest.raises(DataError, match="two tasks are named 'segment'"):
        parse_dataset(section, tmp_path)


def test_unknown_file_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'.*d\.xlsx': unknown file format"):
        parse_dataset(table_section("d.xlsx"), tmp_path)


def test_hf_folder_with_a_missing_split(tmp_path: Path, shop: pa.Table) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset(shop), "test": datasets.Dataset(shop)}
                         ).save_to_disk(str(tmp_path / "hf"))
    section = table_section("hf")
    del section["table"]["split"]  # type: ignore[attr-defined]
    with pytest.raises(DataError, match=r"hf: split 'val' is missing \(splits: train, test\)"):
        _run(section, tmp_path)


def test_unknown_metric_or_loss_before_reading(tmp_path: Path) -> None:
    section = table_section("does-not-exist.csv")
    section["table"]["tasks"][2]["loss"] = "hubber"  # type: ignore[index]
    with pytest.raises(DataError, match="did you mean 'huber'"):
        parse_dataset(section, tmp_path)  # the missing file is not read yet
    section["table"]["tasks"][2]["loss"] = "huber"  # type: ignore[index]
    section["table"]["tasks"][0]["metrics"] = ["r2"]  # type: ignore[index]
    with pytest.raises(DataError, match="'r2' does not apply to a classification task"):
        parse_dataset(section, tmp_path)


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path: Path, shop: pa.Table,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write(_replace(shop, "price", 5, "cheap"), tmp_path / "d.csv")
    config = {"data": "files", "dataset": table_section("d.csv"), "epochs": 1,
              "run_dir": "run", "progress": False, "cache_dir": "cache"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["train", "--config", "c.yaml"]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "row 5, column 'price'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.csv"]
