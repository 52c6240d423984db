"""Class 1, for the commands that read run folders and data folders (issue 16).

``predict``, ``evaluate``, ``train`` (its data files under ``data_root``, a ``datasets``
folder, the checkpoints it resumes from) and ``report`` (a bench's cells) resolve every path
read from a folder and refuse one that leaves it, naming the link, and write nothing; with
``--allow-outside-links`` (``allow_outside_links: true`` in a train config), declared once in
``manytask.cli.flags``, the same command goes through. Each case is tried both ways.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hos_helpers import assert_cli_one_line, run_cli, tree
from hos_runs import checkpoint, link_out

# file of the run folder -> how to find it
RUN_FILES: dict[str, Callable[[Path], Path]] = {
    "config.yaml": lambda run: run / "config.yaml",
    "preprocessing.json": lambda run: run / "preprocessing.json",
    "checkpoint folder": checkpoint,
    "checkpoint weights": lambda run: checkpoint(run) / "model.safetensors",
}


def _set_file(cfg: Path, name: str) -> None:
    """Point the dataset section of ``cfg`` at ``name``."""
    spec = yaml.safe_load(cfg.read_text())
    spec["dataset"]["table"]["file"] = name
    cfg.write_text(yaml.safe_dump(spec))


def _argv(command: str, run: Path, data: Path, out: Path) -> list[str]:
    return [command, "--run-dir", str(run), "--data", str(data / "shop.csv"), "--out",
            str(out / ("p.csv" if command == "predict" else "m.json"))]


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
@pytest.mark.parametrize("which", list(RUN_FILES))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_a_run_file_linking_out_unless_allowed(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, which: str, allow: bool,
) -> None:
    run, data = files_run
    link = link_out(RUN_FILES[which](run), tmp_path / "elsewhere")
    out = tmp_path / "out"
    out.mkdir()
    argv = _argv(command, run, data, out) + (["--allow-outside-links"] if allow else [])
    code, err = run_cli(argv, capsys)
    if allow:
        assert code == 0, err
        assert len(list(out.iterdir())) == 1
    else:
        assert_cli_one_line(code, err, repr(str(link)), "--allow-outside-links")
        assert tree(out) == {}


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
@pytest.mark.parametrize("how", ["link", "dot-dot"])
def test_train_refuses_a_data_file_leading_out_of_data_root_unless_allowed(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    how: str, allow: bool,
) -> None:
    _, data = files_run
    cfg = data / "train.yaml"
    if how == "link":
        link_out(data / "shop.csv", tmp_path / "elsewhere")
    else:  # a name relative to data_root that climbs out of it
        shutil.move(str(data / "shop.csv"), tmp_path / "shop.csv")
        _set_file(cfg, "../shop.csv")
    run_dir = tmp_path / "new-run"
    argv = ["train", "--config", str(cfg), "--run-dir", str(run_dir)]
    code, err = run_cli(argv + (["--allow-outside-links"] if allow else []), capsys)
    if allow:
        assert code == 0, err
        assert (run_dir / "checkpoints" / "latest").is_file()
    else:
        assert_cli_one_line(code, err, "shop.csv", "data_root", "--allow-outside-links")
        assert not run_dir.exists()


def test_an_absolute_data_path_is_the_users_choice_and_is_read(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    _, data = files_run
    shutil.move(str(data / "shop.csv"), tmp_path / "shop.csv")
    _set_file(data / "train.yaml", str(tmp_path / "shop.csv"))
    code, err = run_cli(["train", "--config", str(data / "train.yaml")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
@pytest.mark.parametrize("name", ["state.json", "optimizer.safetensors", "model.safetensors"])
def test_resume_refuses_a_checkpoint_file_linking_out_unless_allowed(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, allow: bool,
) -> None:
    run, data = files_run
    link = link_out(checkpoint(run) / name, tmp_path / "elsewhere")
    before = tree(run)
    argv = ["train", "--config", str(data / "train.yaml"), "--run-dir", str(run), "--resume",
            "--epochs", "2"] + (["--allow-outside-links"] if allow else [])
    code, err = run_cli(argv, capsys)
    if allow:
        assert code == 0, err
        assert (run / "checkpoints" / "epoch-0001").is_dir()
    else:
        assert_cli_one_line(code, err, repr(str(link)), "--allow-outside-links")
        assert tree(run) == before


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
def test_a_datasets_folder_with_a_file_linking_out_is_refused_unless_allowed(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    allow: bool,
) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow.csv as pacsv

    _, data = files_run
    datasets.Dataset(pacsv.read_csv(data / "shop.csv")).save_to_disk(str(data / "hfset"))
    arrow = next((data / "hfset").glob("*.arrow"))
    link_out(arrow, tmp_path / "elsewhere")
    _set_file(data / "train.yaml", "hfset")
    argv = ["train", "--config", str(data / "train.yaml")]
    code, err = run_cli(argv + (["--allow-outside-links"] if allow else []), capsys)
    if allow:
        assert code == 0, err
    else:
        assert_cli_one_line(code, err, arrow.name, "--allow-outside-links")


@pytest.mark.parametrize("allow", [False, True], ids=["refused", "allowed"])
@pytest.mark.parametrize("what", ["cell folder", "cell result"])
def test_report_refuses_a_bench_cell_linking_out_unless_allowed(
    bench_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
    allow: bool,
) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(bench_source, bench)
    cell = next(p for p in (bench / "cells").iterdir() if p.is_dir())
    link = link_out(cell if what == "cell folder" else cell / "result.json",
                    tmp_path / "elsewhere")
    out = tmp_path / "report"
    argv = ["report", str(bench), "--out", str(out)]
    code, err = run_cli(argv + (["--allow-outside-links"] if allow else []), capsys)
    if allow:
        assert code == 0, err
        assert (out / "summary.md").is_file()
    else:
        assert_cli_one_line(code, err, link.name, "--allow-outside-links")
        assert not out.exists()
