"""The tour of docs/own-data.md, run exactly as written on a file generated here."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml
from declared_tables import make_table

from manytask.cli import main

DOC = Path(__file__).resolve().parents[3] / "docs" / "own-data.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_tour_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _blocks("yaml")[0]
    assert len(config.strip().splitlines()) <= 25
    assert len({t["kind"] for t in yaml.safe_load(config)["dataset"]["table"]["tasks"]}) == 3
    pacsv.write_csv(make_table(300), tmp_path / "shop.csv")
    (tmp_path / "shop.yaml").write_text(config)
    commands = [line.split("#")[0].strip() for line in _blocks("bash")[0].splitlines()]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for command in filter(None, commands):
            argv = shlex.split(command)
            assert argv[0] == "manytask"
            assert main(argv[1:]) == 0, command
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "segment" in out and "f1_macro" in out and "rmse" in out
    predictions = pacsv.read_csv(tmp_path / "predictions.csv")
    assert predictions["row"].to_pylist() == list(range(1, 301))  # every row, in input order
    assert {"segment", "segment:p(high)", "churn", "churn:p", "price"} <= set(
        predictions.column_names)
    assert (tmp_path / "runs/shop/report.html").is_file()
    assert (tmp_path / "runs/shop/preprocessing.json").is_file()
    assert (tmp_path / "runs/shop/evaluate-shop.json").is_file()
