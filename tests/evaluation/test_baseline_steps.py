"""Single-task baselines get the joint run's optimizer steps; Δm warns on near-zero baselines."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from manytask.config import config_from_mapping
from manytask.evaluation.bench import baseline_epochs
from manytask.evaluation.measures import delta_m
from manytask.evaluation.summary import steps_note

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "declared"))
from declared_tables import TASKS, make_table


def test_baselines_of_mixed_sources_get_the_joint_steps(tmp_path: Path) -> None:
    sizes = [200, 100, 50]
    sources = []
    for i, (task, n) in enumerate(zip(TASKS, sizes, strict=True)):
        table = make_table(n, seed=i)
        pacsv.write_csv(table, tmp_path / f"s{i}.csv")
        sources.append({"file": f"s{i}.csv", "split": {"column": "part"}, "numeric": ["x1"],
                        "task": dict(task)})
    cfg = config_from_mapping({"data": "files", "dataset": {"sources": sources},
                               "data_root": str(tmp_path), "epochs": 3, "batch_size": 16,
                               "progress": False})
    train = [int(0.7 * n) for n in sizes]  # the rows the split column gives to train
    joint = math.ceil(sum(train) / 16)
    expected = {t["name"]: max(1, round(3 * joint / math.ceil(n / 16)))
                for t, n in zip(TASKS, train, strict=True)}
    assert baseline_epochs(cfg, [t["name"] for t in TASKS]) == expected
    assert expected["price"] > expected["segment"] > 3  # smaller tasks: more epochs


def test_steps_note() -> None:
    results = [{"cell": {"single_task": "a"}, "steps": 30},
               {"cell": {"single_task": None}, "steps": 30}]
    assert "the same number" in steps_note(results)
    results[0]["steps"] = 10
    assert "unequal" in steps_note(results)


def test_delta_m_warns_on_a_near_zero_baseline() -> None:
    dirs = {"a": {"mcc": True}, "b": {"accuracy": True}}
    with pytest.warns(UserWarning, match="baseline a/mcc = 0.01 is near zero"):
        value = delta_m({"a": {"mcc": 0.02}, "b": {"accuracy": 0.5}},
                        {"a": {"mcc": 0.01}, "b": {"accuracy": 0.5}}, dirs)
    assert value == pytest.approx(50.0)
