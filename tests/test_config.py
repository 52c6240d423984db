"""Configurations: strict keys, types and values, flag overrides, the shipped file, and the
tasks each data set names, read from the configuration alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from manytask.config import ConfigError, TrainConfig, config_from_mapping, load_config
from manytask.run import task_names

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_config_and_flag_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("balancer: fixed\nbalancer_params: {weights: {left: 2.0}}\nepochs: 3\n")
    cfg = load_config(path, {"epochs": 1})
    assert cfg.balancer == "fixed" and cfg.epochs == 1
    assert cfg.balancer_params == {"weights": {"left": 2.0}}


def test_an_error_names_the_file_or_the_flags_over_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("accumulate: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: accumulate must be >= 1"):
        load_config(path, {"epochs": 1})
    assert load_config(path, {"accumulate": 2}).accumulate == 2  # a flag mends the file
    path.write_text("epochs: 2\n")
    with pytest.raises(ConfigError, match=r"^command line \(over .*c\.yaml\): accumulate_memory"):
        load_config(path, {"accumulate_memory": "bogus"})


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


def test_defaults_are_valid() -> None:
    assert TrainConfig().balancer == "equal"


def test_shipped_config_lists_every_key_and_loads() -> None:
    path = CONFIGS / "multidigits.yaml"
    values = yaml.safe_load(path.read_text())
    assert set(values) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert load_config(path).balancer == values["balancer"]


def test_each_data_set_names_its_default_tasks() -> None:
    assert task_names(TrainConfig()) == ("left", "right")
    assert task_names(TrainConfig(tasks=["sum"])) == ("sum",)
    # the declared tasks, read from the configuration alone (no file is opened)
    assert task_names(load_config(CONFIGS / "text.yaml", {"data_root": "x"})) == (
        "sst2", "mr", "cr", "subj", "mpqa", "cola", "rte", "trec")
    assert task_names(load_config(CONFIGS / "census-group2.yaml", {"data_root": "x"})) == (
        "education", "marital")


def test_an_empty_run_dir_means_none() -> None:
    assert TrainConfig(run_dir="").run_dir is None
