"""Class 3, for the files of run folders and data files (issue 16).

A run's ``config.yaml`` (read by ``predict``, ``evaluate`` and a resume), its
``preprocessing.json`` (``predict``, ``evaluate``, ``report``), a JSON lines data file (whose
parser crashes the process on deep nesting) and a tokenizer read for ``tokenizer_source``:
each, holding an alias bomb or nesting far past the bound, is refused in one line, quickly,
and nothing is written.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hos_helpers import assert_cli_one_line, family, merge_config, run_cli, tree, write_yaml
from hos_runs import BOMB

DEEP = {"deep array": "[" * 100_000 + "]" * 100_000,
        "deep object": '{"a":' * 50_000 + "1" + "}" * 50_000,
        "just past the bound": "[" * 65 + "]" * 65}


def _under_a_known_key(text: str) -> str:
    """``BOMB`` with its last level under ``tasks``: walked by a reader that expands it."""
    return text + BOMB + "tasks: *i\n"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("where", ["top level", "under a known key"])
def test_an_alias_bomb_in_the_runs_config_is_refused(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, where: str,
) -> None:
    run, data = files_run
    text = (run / "config.yaml").read_text()
    if where == "top level":
        (run / "config.yaml").write_text(text + BOMB)
    else:
        (run / "config.yaml").write_text(_under_a_known_key(text.replace("tasks: null\n", "")))
    out = tmp_path / ("p.csv" if command == "predict" else "m.json")
    began = time.perf_counter()
    code, err = run_cli([command, "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(out)], capsys)
    assert_cli_one_line(code, err, "config.yaml", "alias")
    assert time.perf_counter() - began < 30
    assert not out.exists()


def test_an_alias_bomb_in_the_runs_config_is_refused_on_resume_before_anything_is_written(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    run, data = files_run
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + BOMB)
    before = tree(run)
    code, err = run_cli(["train", "--config", str(data / "train.yaml"), "--run-dir", str(run),
                         "--resume", "--epochs", "2"], capsys)
    assert_cli_one_line(code, err, "config.yaml", "alias")
    assert tree(run) == before


@pytest.mark.parametrize("command", ["predict", "evaluate", "report"])
@pytest.mark.parametrize("shape", list(DEEP))
def test_deeply_nested_preprocessing_is_refused(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, shape: str,
) -> None:
    run, data = files_run
    (run / "preprocessing.json").write_text(DEEP[shape])
    out = tmp_path / "out"
    if command == "report":
        argv = ["report", str(run), "--out", str(out)]
    else:
        out = tmp_path / "out.csv"
        argv = [command, "--run-dir", str(run), "--data", str(data / "shop.csv"), "--out",
                str(out)]
    code, err = run_cli(argv, capsys)
    assert_cli_one_line(code, err, "preprocessing.json", "nested deeper than 64")
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "predict"])
@pytest.mark.parametrize("shape", list(DEEP))
def test_a_json_lines_row_nested_past_the_bound_is_refused_naming_its_row(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, shape: str,
) -> None:
    run, data = files_run
    lines = (data / "shop.jsonl").read_text().splitlines()
    lines[6] = lines[6][:-1] + ', "junk": ' + DEEP[shape] + "}"
    (data / "shop.jsonl").write_text("\n".join(lines) + "\n")
    if command == "train":
        cfg = yaml.safe_load((data / "train.yaml").read_text())
        cfg["dataset"]["table"]["file"] = "shop.jsonl"
        (data / "train.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["train", "--config", str(data / "train.yaml"), "--run-dir",
                str(tmp_path / "out-run")]
    else:
        argv = ["predict", "--run-dir", str(run), "--data", str(data / "shop.jsonl"), "--out",
                str(tmp_path / "out.csv")]
    code, err = run_cli(argv, capsys)
    assert_cli_one_line(code, err, "shop.jsonl", "row 7", "nested deeper than 64")
    assert not list(tmp_path.glob("out*"))


def test_json_lines_with_many_shallow_brackets_and_brackets_in_text_are_read(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run, data = files_run
    lines = (data / "shop.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1] + ', "wide": [' + ",".join(["[1]"] * 500) + "]}"
    lines[3] = lines[3][:-1] + ', "note": "' + "[" * 500 + '"}'
    (data / "shop.jsonl").write_text("\n".join(lines) + "\n")
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(data / "shop.jsonl"),
                         "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("shape", list(DEEP))
def test_a_deep_tokenizer_read_for_tokenizer_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str,
) -> None:
    base, models = family(tmp_path / "in")
    for folder in (base, *models):
        (folder / "tokenizer.json").write_text(DEEP[shape])
    cfg = write_yaml(tmp_path / "m.yaml", merge_config(base, models, tokenizer_source="base"))
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "out"), "--quiet"], capsys)
    assert_cli_one_line(code, err, "tokenizer.json", "nested deeper than 64")
    assert not (tmp_path / "out").exists()
