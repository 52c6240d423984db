"""The command line end to end on MultiDigits: one-line errors, names checked before data,
help texts, listings, architectures and data sets by name."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import manytask
from manytask.cli import main
from manytask.config import load_config


def test_train_end_to_end_prints_per_task_table(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["train", "--epochs", "2", "--train-size", "1200", "--no-progress",
                 "--run-dir", str(run), "--hidden", "64", "--lr", "0.003"])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert "left" in lines and "right" in lines
    header = out.splitlines()[1].split()
    acc = header.index("accuracy")
    assert float(lines["left"][acc]) > 0.5 and float(lines["right"][acc]) > 0.5  # chance: 0.1
    assert (run / "checkpoints" / "latest").exists()
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["task"] for r in rows} == {"left", "right"}
    saved = load_config(run / "config.yaml")
    assert saved.epochs == 2 and saved.hidden == [64]


def test_resume_from_the_command_line(tmp_path: Path, capsys) -> None:
    args = ["train", "--train-size", "600", "--no-progress", "--hidden", "32",
            "--run-dir", str(tmp_path)]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert (tmp_path / "checkpoints" / "epoch-0001").exists()


def test_cli_errors_are_one_line_not_tracebacks(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("balancer: mgda\nbalancer_params: {densty: 0.5}\nepochs: 1\ntrain_size: 100\n")
    assert main(["train", "--config", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "densty" in err and "Traceback" not in err
    bad.write_text("- not a mapping\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "mapping" in capsys.readouterr().err
    assert main(["train", "--balancer", "nope", "--epochs", "1"]) == 2
    assert "unknown balancer" in capsys.readouterr().err


# ------------------------------------------------------------------ names checked before data
def test_misspelt_balancer_param_is_reported_before_any_data_is_read(tmp_path: Path,
                                                                     capsys) -> None:
    # data that would fail to load (no such folder): the parameter must be named first
    bad = tmp_path / "bad.yaml"
    data = ("data: files\ndataset: {table: {file: absent.csv, split: {ratio: [0.8, 0.1, "
            "0.1]}, numeric: [x], tasks: [{name: y, kind: regression, label: y}]}}\n"
            f"data_root: {tmp_path}\n")
    bad.write_text(data + "balancer: cagrad\nbalancer_params: {cc: 0.5}\n")
    assert main(["train", "--config", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'cc' (did you mean 'c'?)" in err and "absent.csv" not in err
    assert len(err.splitlines()) == 1
    # with the parameter fixed, the data is what is wrong
    bad.write_text(data + "balancer: cagrad\nbalancer_params: {c: 0.5}\n")
    assert main(["train", "--config", str(bad), "--no-progress"]) == 2
    assert "absent.csv' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "needle"), [
    (["--arch", "mmoe", "--arch-param", "n_expert=2"], "did you mean 'n_experts'"),
    (["--arch", "mmoe", "--arch-param", "n_experts=0"], "n_experts must be >= 1"),
    (["--balancer", "mgda", "--balancer-param", "normalization=loss++"], "did you mean 'loss+'"),
    (["--balancer", "upgrade"], "unknown balancer 'upgrade' (did you mean 'upgrad'?)"),
    (["--data", "census2"], "unknown data set 'census2'"),
    (["--arch", "mmoe", "--arch-param", "n_experts=[1"], "is not valid YAML"),
])
def test_config_names_and_parameters_are_one_line_errors(flags: list[str], needle: str,
                                                         tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--run-dir", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not run.exists()  # a refused command writes nothing


# ------------------------------------------------------------------ the parser explains itself
def _actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a}", h) for a, h in _actions(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action.help


def test_every_option_of_every_command_has_a_help_text() -> None:
    from manytask.cli import build_parser

    missing = [name for name, text in _actions(build_parser()) if not text]
    assert missing == []


def test_help_choices_come_from_the_registries(capsys) -> None:
    from manytask.balancers.registry import BALANCERS
    from manytask.models import ARCHITECTURES

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("the training method: " + ", ".join(BALANCERS.names())) in out
    assert ("the architecture: " + ", ".join(ARCHITECTURES.names())) in out


def test_version(capsys) -> None:
    import manytask

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"manytask {manytask.__version__}"


@pytest.mark.parametrize("command", ["balancers", "architectures", "merge-methods", "samplers",
                                     "group-searches", "data-sets"])
def test_listings_show_every_registered_name(command: str, capsys) -> None:
    from manytask.cli.listing import registries

    assert main([command]) == 0
    out = capsys.readouterr().out
    registry = registries()[command][0]()
    assert len(registry) > 0
    assert all(f"{name} " in out for name in registry.names())
    name = registry.names()[0]
    assert main([command, name]) == 0
    assert capsys.readouterr().out.startswith(f"{name}: ")


def test_usage_errors_are_one_line_with_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--epochs", "x"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--epochs" in err and "'x'" in err


def test_an_internal_error_says_so_in_one_line(monkeypatch, capsys) -> None:
    import manytask.cli.train as train_command

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(train_command, "run_train", broken)
    assert main(["train", "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "internal error: KeyError" in err and "MANYTASK_TRACEBACK=1" in err
    monkeypatch.setenv("MANYTASK_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["train", "--epochs", "1"])


def test_a_missing_optional_extra_names_the_extra(monkeypatch, capsys) -> None:
    import manytask.cli.train as train_command

    def needs_text(args):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(train_command, "run_train", needs_text)
    assert main(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert "manytask[text]" in err and len(err.splitlines()) == 1


def test_the_installed_command_line_end_to_end() -> None:
    """One subprocess (about 2 s of imports): ``python -m manytask`` exits 2 with one line."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "manytask", "train", "--balancer", "cagrad",
                           "--balancer-param", "c=-1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("manytask train: error: balancer 'cagrad': c must be >= 0, "
                                   "got -1")


@pytest.mark.parametrize(("error", "needle"), [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 5e13 "
                  "bytes"), "out of memory: a size in the configuration is too large"),
    (OverflowError("cannot fit 'int' into an index-sized integer"), "cannot fit"),
    (OSError(28, "No space left on device"), "No space left on device"),
])
def test_resource_and_size_errors_are_user_errors(error: Exception, needle: str,
                                                  monkeypatch, capsys) -> None:
    import manytask.cli.train as train_command

    def fails(args):
        raise error

    monkeypatch.setattr(train_command, "run_train", fails)
    assert main(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "internal" not in err


# ------------------------------------------------------------------ architectures and data by name
@pytest.mark.parametrize("arch", ["mmoe", "ple", "cross_stitch"])
def test_train_any_registered_architecture_from_the_command_line(
    arch: str, tmp_path: Path, capsys
) -> None:
    code = main(["train", "--epochs", "1", "--train-size", "300", "--no-progress",
                 "--arch", arch, "--arch-param", "tower_hidden=[8]", "--balancer", "mgda",
                 "--mode", "feature", "--run-dir", str(tmp_path)])
    assert code == 0
    assert "left" in capsys.readouterr().out


def test_bad_architecture_and_parameters_are_one_line_errors(capsys) -> None:
    assert main(["train", "--arch", "nope", "--epochs", "1"]) == 2
    assert "unknown architecture 'nope'" in capsys.readouterr().err
    assert main(["train", "--arch", "mmoe", "--arch-param", "n_expertz=2", "--epochs", "1",
                 "--train-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "n_expertz" in err and len(err.strip().splitlines()) == 1


def test_bundled_files_are_configurations_not_data_sources(capsys) -> None:
    # Census-Income and the text tasks are configs/census.yaml and configs/text.yaml (data:
    # files); no data source of that name is left in the library
    for name in ("census", "text"):
        assert main(["train", "--data", name, "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"unknown data set {name!r}" in err and len(err.strip().splitlines()) == 1


def test_architectures_command_lists_the_registry(capsys) -> None:
    assert main(["architectures"]) == 0
    out = capsys.readouterr().out
    for name in manytask.models.ARCHITECTURES.names():
        assert name in out
