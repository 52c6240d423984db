"""Class 8: tracebacks instead of one line (issue 16), found by this round's probe.

A data file whose feature column holds lists or objects (JSON lines, Parquet), a run's
``preprocessing.json`` that is malformed in any of its parts, a seed too large for the
generators, a ``--run-dir`` that is not a folder: each ends with exit code 2 and one line
naming what is wrong and where, never an internal error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hos_helpers import assert_cli_one_line, run_cli

NESTED = {"list": [1.0, 2.0], "object": {"a": [1, 2]}, "list of objects": [{"b": 1}]}


@pytest.mark.parametrize("value", list(NESTED))
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("command", ["predict", "train"])
def test_a_feature_column_of_lists_or_objects_is_refused_naming_it(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, fmt: str, value: str,
) -> None:
    run, data = files_run
    table = pq.read_table(data / "shop.parquet")
    i = table.column_names.index("x1")
    table = table.set_column(i, "x1", pa.array([NESTED[value]] * table.num_rows))
    path = data / f"nested.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    if command == "predict":
        argv = ["predict", "--run-dir", str(run), "--data", str(path), "--out",
                str(tmp_path / "p.csv")]
    else:
        import yaml

        cfg = yaml.safe_load((data / "train.yaml").read_text())
        cfg["dataset"]["table"]["file"] = path.name
        (data / "train.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["train", "--config", str(data / "train.yaml")]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert_cli_one_line(code, err, path.name, "column 'x1'", "lists or objects")


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.__setitem__(key, value)


def _first_scale(value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(d: dict[str, Any]) -> None:
        column = next(iter(d["numeric"]))
        d["numeric"][column] = value

    return edit


def _first_task(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d["tasks"][0].__setitem__(key, value)


PREPROCESSING: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "a list": (lambda d: None, "not an object"),
    "version missing": (lambda d: d.pop("version"), "version"),
    "version a 10 kB string": (_set("version", "v" * 10_000), "characters"),
    "tasks a string": (_set("tasks", "oops"), "not a preprocessing file"),
    "tasks missing": (lambda d: d.pop("tasks"), "not a preprocessing file"),
    "numeric a list": (_set("numeric", [1, 2]), "not a preprocessing file"),
    "scale NaN": (_first_scale([float("nan"), 1.0]), "finite"),
    "scale std 0": (_first_scale([0.0, 0.0]), "positive standard deviation"),
    "scale std negative": (_first_scale([0.0, -1.0]), "positive standard deviation"),
    "scale one number": (_first_scale(3.0), "not a preprocessing file"),
    "vocabulary of numbers": (lambda d: d["categorical"].__setitem__(
        next(iter(d["categorical"])), [1, 2]), "not a list of text values"),
    "classes a string": (_first_task("classes", "abc"), "not a list of text values"),
    "task kind unknown": (_first_task("kind", "telepathy"), "telepathy"),
    "task missing its label": (lambda d: d["tasks"][0].pop("label"), "not a preprocessing"),
    "text a list": (_set("text", [1]), "text"),
}


@pytest.mark.parametrize("case", list(PREPROCESSING))
def test_a_malformed_preprocessing_file_is_one_line(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    run, data = files_run
    edit, needle = PREPROCESSING[case]
    path = run / "preprocessing.json"
    state = json.loads(path.read_text())
    if case == "a list":
        state = [state]
    else:
        edit(state)
    path.write_text(json.dumps(state))
    out = tmp_path / "p.csv"
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(out)], capsys)
    assert code == 2, err
    assert_cli_one_line(code, err, "preprocessing.json", needle)
    assert len(err) < 600
    assert not out.exists()


@pytest.mark.parametrize("seed", [2**32, 2**70, -1])
def test_a_seed_out_of_the_generators_range_is_refused_by_name(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], seed: int,
) -> None:
    _, data = files_run
    code, err = run_cli(["train", "--config", str(data / "train.yaml"), "--seed", str(seed)],
                        capsys)
    assert_cli_one_line(code, err, "seed must lie in [0, 2**32)")


@pytest.mark.parametrize("what", ["a file", "missing"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_run_dir_that_is_not_a_folder(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, what: str,
) -> None:
    _, data = files_run
    run = tmp_path / "not-a-run"
    if what == "a file":
        run.write_text("x")
    code, err = run_cli([command, "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(tmp_path / "o.csv")], capsys)
    assert_cli_one_line(code, err, str(run), "not a folder")
