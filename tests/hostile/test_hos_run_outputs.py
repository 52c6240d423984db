"""Class 6, for ``predict``, ``evaluate`` and ``report`` (issue 16).

An output that would replace the input data file is refused always; one that would replace
a file of the user's is refused unless ``--overwrite`` (and then replaced whole); a report
into a folder holding files of its names that no report wrote likewise. The leftover of a
killed write is removed at the next run, with a note. (Concurrent merges: test_hos_locks.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hos_helpers import assert_cli_one_line, run_cli

MINE = "precious,data\n1,2\n"


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_predict_never_replaces_its_input(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], fmt: str,
    overwrite: bool,
) -> None:
    run, data = files_run
    path = data / f"shop.{fmt}"
    before = path.read_bytes()
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(path), "--out",
                         str(path)] + (["--overwrite"] if overwrite else []), capsys)
    assert_cli_one_line(code, err, "is the --data file")
    assert path.read_bytes() == before


@pytest.mark.parametrize("overwrite", [False, True], ids=["refused", "overwrite"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_existing_output_is_replaced_only_with_overwrite(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    command: str, overwrite: bool,
) -> None:
    run, data = files_run
    mine = tmp_path / ("mine.csv" if command == "predict" else "mine.json")
    mine.write_text(MINE)
    argv = [command, "--run-dir", str(run), "--data", str(data / "shop.csv"), "--out",
            str(mine)] + (["--overwrite"] if overwrite else [])
    code, err = run_cli(argv, capsys)
    if overwrite:
        assert code == 0, err
        assert mine.read_text() != MINE
    else:
        assert_cli_one_line(code, err, str(mine), "--overwrite")
        assert mine.read_text() == MINE


def test_evaluates_default_output_is_its_own_and_replaced_on_a_rerun(
    files_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    run, data = files_run
    argv = ["evaluate", "--run-dir", str(run), "--data", str(data / "shop.csv")]
    assert run_cli(argv, capsys)[0] == 0
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (run / "evaluate-shop.json").is_file()


@pytest.mark.parametrize("left", [".p.csv.partial-999999999-deadbeef", ".p.csv.tmp"])
def test_the_leftover_of_a_killed_prediction_is_removed_with_a_note(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], left: str,
) -> None:
    run, data = files_run
    (tmp_path / left).write_text("half a file")
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    assert f"removed {left}" in err
    assert not (tmp_path / left).exists()
    assert (tmp_path / "p.csv").is_file()


def test_the_partial_file_of_a_live_prediction_is_kept(
    files_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run, data = files_run
    live = tmp_path / f".p.csv.partial-{os.getpid()}-cafecafe"
    live.write_text("being written")
    code, err = run_cli(["predict", "--run-dir", str(run), "--data", str(data / "shop.csv"),
                         "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    assert live.read_text() == "being written"


@pytest.mark.parametrize("name", ["summary.md", "report.html", "results.csv", "curves.png"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["refused", "overwrite"])
def test_report_refuses_to_replace_the_users_files_unless_overwrite(
    bench_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
    overwrite: bool,
) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(bench_source, bench)
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("my notes")
    code, err = run_cli(["report", str(bench), "--out", str(out)]
                        + (["--overwrite"] if overwrite else []), capsys)
    if overwrite:
        assert code == 0, err
    else:
        assert_cli_one_line(code, err, name, "--overwrite")
        assert (out / name).read_text() == "my notes"
        assert sorted(p.name for p in out.iterdir()) == [name]


def test_a_report_replaces_its_own_previous_report(
    bench_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(bench_source, bench)
    out = tmp_path / "rep"
    argv = ["report", str(bench), "--out", str(out)]
    assert run_cli(argv, capsys)[0] == 0
    (out / "notes.txt").write_text("mine, another name")
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine, another name"
