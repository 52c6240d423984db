"""Class 5, for run folders, bench cells and data folders (issue 16).

A named pipe where ``predict``, ``evaluate``, ``report`` or a resume expects a file of a run
(its config, preprocessing, checkpoint files, a cell's logs) or a ``datasets`` folder's file
is refused by name before it is opened: opening it would block forever. Each case runs under
the watchdog of ``test_hos_notfiles``: a hang fails the test, not the suite.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hos_helpers import assert_cli_one_line, run_cli
from hos_runs import checkpoint, fifo
from test_hos_notfiles import _finishes

RUN_FILES: dict[str, Callable[[Path], Path]] = {
    "config.yaml": lambda run: run / "config.yaml",
    "preprocessing.json": lambda run: run / "preprocessing.json",
    "model.safetensors": lambda run: checkpoint(run) / "model.safetensors",
}
RESUME_FILES: dict[str, Callable[[Path], Path]] = {
    "config.yaml": lambda run: run / "config.yaml",
    **{name: (lambda run, n=name: checkpoint(run) / n)  # type: ignore[misc]
       for name in ("state.json", "optimizer.safetensors", "rng.safetensors")},
}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str], pipe: Path) -> tuple[int, str]:
    box: dict[str, tuple[int, str]] = {}

    def call() -> None:
        box["r"] = run_cli(argv, capsys)

    err = _finishes(call, fifo=pipe)
    assert err is None, err
    return box["r"]


@pytest.mark.parametrize("which", list(RUN_FILES))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_pipe_in_the_run_folder_is_refused(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, which: str,
) -> None:
    run, data = files_run
    pipe = fifo(RUN_FILES[which](run))
    out = tmp_path / "out.csv"
    code, err = _cli([command, "--run-dir", str(run), "--data", str(data / "shop.csv"),
                      "--out", str(out)], capsys, pipe)
    assert_cli_one_line(code, err, which, "named pipe")
    assert not out.exists()


@pytest.mark.parametrize("which", list(RESUME_FILES))
def test_a_pipe_among_the_files_a_resume_reads_is_refused_before_anything_is_written(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], which: str,
) -> None:
    run, data = files_run
    pipe = fifo(RESUME_FILES[which](run))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file())
    code, err = _cli(["train", "--config", str(data / "train.yaml"), "--run-dir", str(run),
                      "--resume", "--epochs", "2"], capsys, pipe)
    assert_cli_one_line(code, err, which, "named pipe")
    after = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file())
    assert after == before


@pytest.mark.parametrize("which", ["metrics.csv", "steps.csv", "result.json"])
def test_a_pipe_in_a_bench_cell_is_refused_by_report(
    bench_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str,
) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(bench_source, bench)
    cell = next(p for p in (bench / "cells").iterdir() if p.is_dir())
    pipe = fifo(cell / which)
    code, err = _cli(["report", str(bench), "--out", str(tmp_path / "r")], capsys, pipe)
    assert_cli_one_line(code, err, which, "named pipe")


def test_a_pipe_in_the_run_folder_of_a_single_run_report(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run, _ = files_run
    pipe = fifo(run / "preprocessing.json")
    code, err = _cli(["report", str(run), "--out", str(tmp_path / "r")], capsys, pipe)
    assert_cli_one_line(code, err, "preprocessing.json", "named pipe")


@pytest.mark.parametrize("name", ["state.json", "dataset_info.json", "data-00000-of-00001.arrow"])
def test_a_pipe_in_a_datasets_folder_is_refused(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], name: str,
) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow.csv as pacsv
    import yaml

    _, data = files_run
    datasets.Dataset(pacsv.read_csv(data / "shop.csv")).save_to_disk(str(data / "hfset"))
    pipe = fifo(data / "hfset" / name)
    cfg = yaml.safe_load((data / "train.yaml").read_text())
    cfg["dataset"]["table"]["file"] = "hfset"
    (data / "train.yaml").write_text(yaml.safe_dump(cfg))
    code, err = _cli(["train", "--config", str(data / "train.yaml")], capsys, pipe)
    assert_cli_one_line(code, err, name, "named pipe")
    assert os.path.exists(pipe)
