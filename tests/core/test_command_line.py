"""The command line end to end on MultiDigits, and strict configs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from manytask.cli import main
from manytask.config import ConfigError, TrainConfig, config_from_mapping, load_config


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


def test_yaml_config_and_flag_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("balancer: fixed\nbalancer_params: {weights: {left: 2.0}}\nepochs: 3\n")
    cfg = load_config(path, {"epochs": 1})
    assert cfg.balancer == "fixed" and cfg.epochs == 1
    assert cfg.balancer_params == {"weights": {"left": 2.0}}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"epoch": 3}, r"unknown key\(s\) \['epoch'\]"),
        ({"epochs": "3"}, "epochs must be of type"),
        ({"epochs": -1}, "epochs must be positive"),
        ({"lr": 0}, "lr must be > 0"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"missing_rate": 1.5}, "missing_rate"),
        ({"hidden": [0]}, "hidden"),
        ({"resume": True}, "resume needs run_dir"),
        ({"batch_size": True}, "batch_size must be of type"),
    ],
)
def test_bad_configs_are_rejected(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(values)


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


def test_defaults_are_valid() -> None:
    assert TrainConfig().balancer == "equal"


def test_shipped_config_lists_every_key_and_loads() -> None:
    import dataclasses

    import yaml

    path = Path(__file__).resolve().parents[2] / "configs" / "multidigits.yaml"
    values = yaml.safe_load(path.read_text())
    assert set(values) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert load_config(path).balancer == values["balancer"]
