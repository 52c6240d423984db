"""Class 7, for ``predict``, ``evaluate`` and ``train`` (issue 16).

A prediction or evaluation with nothing to work on (every row unusable, a task with no
labelled row) is an error naming the file, not an empty output or a metric of nothing at
exit 0; a task named twice is refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hos_helpers import assert_cli_one_line, run_cli


def _spoil(data: Path, column: str, value: object, tmp: Path) -> Path:
    table = pacsv.read_csv(data / "shop.csv")
    i = table.column_names.index(column)
    kind = pa.string() if isinstance(value, str) else table.schema.field(column).type
    table = table.set_column(i, column, pa.array([value] * table.num_rows, kind))
    pacsv.write_csv(table, tmp / "spoilt.csv")
    return tmp / "spoilt.csv"


@pytest.mark.parametrize("column,value", [("x1", "oops"), ("x2", "1,5")])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_file_none_of_whose_rows_is_usable_is_an_error(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, column: str, value: str,
) -> None:
    run, data = files_run
    path = _spoil(data, column, value, tmp_path)
    out = tmp_path / ("p.csv" if command == "predict" else "m.json")
    code, err = run_cli([command, "--run-dir", str(run), "--data", str(path), "--out",
                         str(out)], capsys)
    assert_cli_one_line(code, err, "spoilt.csv", "none of its", "rows is usable")
    assert not out.exists()


@pytest.mark.parametrize("task,column", [("price", "price"), ("churn", "churn"),
                                         ("segment", "segment")])
def test_evaluate_refuses_a_task_with_no_labelled_row(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    task: str, column: str,
) -> None:
    run, data = files_run
    table = pacsv.read_csv(data / "shop.csv")
    i = table.column_names.index(column)
    table = table.set_column(i, column, pa.nulls(table.num_rows, table.schema.field(column).type))
    pacsv.write_csv(table, tmp_path / "nolabel.csv")
    out = tmp_path / "m.json"
    code, err = run_cli(["evaluate", "--run-dir", str(run), "--data",
                         str(tmp_path / "nolabel.csv"), "--out", str(out)], capsys)
    assert_cli_one_line(code, err, f"task {task!r}", "no usable labelled row")
    assert not out.exists()


@pytest.mark.parametrize("tasks", [["price", "price"], ["churn", "price", "churn"]])
def test_a_task_named_twice_is_refused(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    tasks: list[str],
) -> None:
    _, data = files_run
    code, err = run_cli(["train", "--config", str(data / "train.yaml"), "--run-dir",
                         str(tmp_path / "r"), "--tasks", *tasks], capsys)
    assert_cli_one_line(code, err, "given twice")
    assert not (tmp_path / "r").exists()
