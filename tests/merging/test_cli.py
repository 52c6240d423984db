"""The ``merge`` subcommand, wired into a throwaway argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from manytask.cli.merging import add_merge_command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="manytask")
    add_merge_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_merge_command(family, tmp_path: Path, capsys) -> None:
    base, models, _, _ = family(2)
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "merge_method": "dare_ties",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"density": 0.5}} for m in models],
        "parameters": {"seed": 3},
    }))
    args = parse(["merge", str(config), str(tmp_path / "out")])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert "merged" in capsys.readouterr().err


def test_merge_command_reports_bad_config(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: "
                      "{density: 1.5}}]\n")
    args = parse(["merge", str(config), str(tmp_path / "out"), "--quiet"])
    assert args.func(args) == 2
    assert "density must be <= 1, got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_progress_to_a_file_has_no_carriage_returns(family, tmp_path: Path, capsys) -> None:
    base, models, _, _ = family(2)
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({"merge_method": "task_arithmetic",
                                      "base_model": str(base),
                                      "models": [str(m) for m in models]}))
    args = parse(["merge", str(config), str(tmp_path / "out")])
    assert args.func(args) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("[1/") and lines[-1].startswith("merged ")
    assert all(line.strip() for line in lines)


def test_a_merge_error_is_one_line_without_a_blank_line_before(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: "
                      "{densty: 0.5}}]\n")
    args = parse(["merge", str(config), str(tmp_path / "out")])  # progress on, not --quiet
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("manytask merge: error: ") and err.count("\n") == 1
    assert "did you mean 'density'" in err
