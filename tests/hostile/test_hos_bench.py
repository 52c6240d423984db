"""Class 7: commands that succeed when they failed (issue 16).

``bench`` validates every name and parameter before the first cell (a typo in the last
method wastes no baseline; a name with path characters writes nothing anywhere), keys each
cell's folder by its full configuration (a re-run with other flags reuses no old cell), and
exits non-zero with a summary when a cell failed. ``report`` refuses runs of different data,
tasks or settings unless told what to compare. Cells here are run by a stand-in for the
training subprocess that writes a plausible result, so the grid logic is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hos_helpers import assert_cli_one_line, run_cli

from manytask.config import ConfigError, config_from_mapping
from manytask.evaluation import bench
from manytask.evaluation.bench import Cell, CellsFailedError, cell_dir, grid, run_grid
from manytask.evaluation.report import report

BASE = {"epochs": 1, "train_size": 64, "hidden": [8]}


class FakeCells:
    """Stands for the per-cell subprocess: records which cells ran, fails the ones asked."""

    def __init__(self, fail: tuple[str, ...] = (), accuracy: float = 0.9):
        self.ran: list[str] = []
        self.fail = fail
        self.accuracy = accuracy

    def __call__(self, config_path: Path, log_path: Path) -> tuple[int, float]:
        import yaml

        cfg = yaml.safe_load(config_path.read_text())
        folder = config_path.parent
        self.ran.append(folder.name)
        if any(folder.name.startswith(f) for f in self.fail):
            log_path.write_text("Traceback: boom\n")
            return 1, 10.0
        tasks = cfg["tasks"] or ["left", "right"]
        metrics = {t: {"accuracy": self.accuracy - 0.01 * cfg["seed"], "loss": 0.3}
                   for t in tasks}
        result = {"config": cfg, "val": metrics, "test": metrics, "step_seconds": 0.01,
                  "steps": 10, "skipped_steps": 0, "wall_seconds": 0.1}
        (folder / bench.RESULT).write_text(json.dumps(result))
        return 0, 10.0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCells:
    cells = FakeCells()
    monkeypatch.setattr(bench, "_run_subprocess", cells)
    return cells


BAD_METHODS = {
    "unknown last": ["equal", "mgda", "nosuch"],
    "misspelt": ["equal", "pcgard"],
    "parent path": ["equal", "../../escape"],
    "absolute": ["/tmp/x"],
    "slash": ["equal/../x"],
    "dot dot": [".."],
    "hidden": [".hidden"],
    "backslash": ["a\\b"],
    "empty": [""],
}


@pytest.mark.parametrize("case", sorted(BAD_METHODS))
def test_bad_method_refused_before_any_cell(tmp_path: Path, fake: FakeCells, case: str) -> None:
    base = config_from_mapping(BASE)
    cells = grid(BAD_METHODS[case], ["hard_sharing"], [0], ["left", "right"])
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        run_grid(base, cells, run, echo=lambda m: None)
    assert "method" in str(info.value)
    assert fake.ran == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("archs", "params", "needle"),
    [
        (["hard_sharing", "nosuch_arch"], {}, "nosuch_arch"),
        (["../arch"], {}, "architecture"),
        (["hard_sharing"], {"balancer": "cagrad", "balancer_params": {"c": -5}}, "cagrad"),
        (["hard_sharing"], {"balancer": "equal", "balancer_params": {"nosuch": 1}}, "nosuch"),
    ],
)
def test_bad_arch_or_params_refused_before_any_cell(
    tmp_path: Path, fake: FakeCells, archs: list, params: dict, needle: str
) -> None:
    base = config_from_mapping({**BASE, **params})
    cells = grid(["equal", str(params.get("balancer", "equal"))], archs, [0], ["left", "right"])
    with pytest.raises(ValueError, match=needle):
        run_grid(base, cells, tmp_path / "run", echo=lambda m: None)
    assert fake.ran == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["../../escape", "nosuch"])
def test_cli_refuses_before_any_cell(
    tmp_path: Path, fake: FakeCells, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    run = tmp_path / "run"
    code, err = run_cli(["bench", "--methods", "equal", method, "--seeds", "0", "--epochs", "1",
                         "--run-dir", str(run)], capsys)
    assert_cli_one_line(code, err, method)
    assert code == 2 and fake.ran == [] and not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "reused"),
    [({}, True), ({"epochs": 2}, False), ({"lr": 0.01}, False), ({"train_size": 65}, False),
     ({"hidden": [9]}, False), ({"log_every": 5}, False)],
    ids=["same", "epochs", "lr", "train_size", "hidden", "log_every"],
)
def test_cells_are_keyed_by_their_configuration(
    tmp_path: Path, fake: FakeCells, change: dict, reused: bool
) -> None:
    cells = grid(["equal", "mgda"], ["hard_sharing"], [0], ["left", "right"])
    first = config_from_mapping(BASE)
    run_grid(first, cells, tmp_path, echo=lambda m: None)
    assert len(fake.ran) == 4
    again = config_from_mapping({**BASE, **change})
    messages: list[str] = []
    results = run_grid(again, cells, tmp_path, echo=messages.append)
    expected = "4 already done, 0 to run" if reused else "0 already done, 4 to run"
    assert messages[0].endswith(expected)
    assert len(fake.ran) == (4 if reused else 8)
    assert all(r["config"]["epochs"] == again.epochs for r in results)
    assert {cell_dir(tmp_path, first, c) == cell_dir(tmp_path, again, c) for c in cells} == {reused}


@pytest.mark.parametrize("failing", [("mgda",), ("single-left",), ("equal", "mgda")])
def test_failed_cells_make_the_bench_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: tuple[str, ...]
) -> None:
    fake = FakeCells(fail=failing)
    monkeypatch.setattr(bench, "_run_subprocess", fake)
    cells = grid(["equal", "mgda"], ["hard_sharing"], [0], ["left", "right"])
    with pytest.raises(CellsFailedError) as info:
        run_grid(config_from_mapping(BASE), cells, tmp_path, echo=lambda m: None)
    message = str(info.value)
    assert len(fake.ran) == 4  # the others still ran
    assert message.startswith(f"{len(failing)} of 4 cells failed")
    for name in failing:
        assert name in message
    assert "\n" not in message and "log.txt" in message


def test_failed_cell_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "_run_subprocess", FakeCells(fail=("mgda",)))
    code, err = run_cli(["bench", "--methods", "equal", "mgda", "--seeds", "0", "--epochs",
                         "1", "--run-dir", str(tmp_path / "run")], capsys)
    assert_cli_one_line(code, err, "1 of 4 cells failed", "mgda__hard_sharing__seed0")
    assert code != 0


def _bench(root: Path, name: str, fake: FakeCells, **settings: Any) -> Path:
    run = root / name
    tasks = settings.pop("tasks", ["left", "right"])
    base = config_from_mapping({**BASE, **settings, "tasks": tasks})
    # the baselines' epochs as given: counting batches would prepare the (fake) tasks' data
    run_grid(base, grid(["equal", "mgda"], ["hard_sharing"], [0, 1], tasks), run,
             echo=lambda m: None, baseline_steps="epochs")
    return run


@pytest.mark.parametrize(
    ("settings", "needle"),
    [({"epochs": 2}, "epochs"), ({"lr": 0.1}, "lr"), ({"missing_rate": 0.5}, "missing_rate"),
     ({"train_size": 100, "epochs": 3}, "epochs, train_size")],
)
def test_report_refuses_runs_of_other_settings(
    tmp_path: Path, fake: FakeCells, settings: dict, needle: str
) -> None:
    a = _bench(tmp_path, "a", fake)
    b = _bench(tmp_path, "b", fake, **settings)
    with pytest.raises(ValueError, match=needle) as info:
        report([a, b], tmp_path / "out")
    assert "--compare" in str(info.value)
    assert not (tmp_path / "out").exists()
    made = report([a, b], tmp_path / "out", compare=list(settings))  # told what to compare
    summary = made["summary"].read_text()
    for key, value in settings.items():  # rows labelled with each run's value
        assert f"{key}={value}" in summary
    first = next(iter(settings))
    assert f"{first}={config_from_mapping(BASE).__dict__[first]}" in summary


@pytest.mark.parametrize("tasks", [["left"], ["right", "left", "extra"]])
def test_report_refuses_other_task_sets(tmp_path: Path, fake: FakeCells, tasks: list) -> None:
    a = _bench(tmp_path, "a", fake)
    b = _bench(tmp_path, "b", fake, tasks=tasks)
    for compare in ([], ["tasks"]):
        with pytest.raises(ValueError, match="different task sets"):
            report([a, b], tmp_path / "out", compare=compare)


def test_report_cli_one_line(tmp_path: Path, fake: FakeCells,
                             capsys: pytest.CaptureFixture[str]) -> None:
    a = _bench(tmp_path, "a", fake)
    b = _bench(tmp_path, "b", fake, epochs=4)
    code, err = run_cli(["report", str(a), str(b), "--out", str(tmp_path / "o")], capsys)
    assert_cli_one_line(code, err, "epochs", "--compare")
    code, _ = run_cli(["report", str(a), str(b), "--out", str(tmp_path / "o"), "--compare",
                       "epochs"], capsys)
    assert code == 0


def test_same_settings_report_as_before(tmp_path: Path, fake: FakeCells) -> None:
    a = _bench(tmp_path, "a", fake)
    b = _bench(tmp_path, "b", fake)
    made = report([a, b], tmp_path / "out")
    assert "| mgda | hard_sharing |" in made["summary"].read_text()


def test_a_spec_with_a_bomb_is_refused(tmp_path: Path, fake: FakeCells) -> None:
    a = _bench(tmp_path, "a", fake)
    (a / "bench.yaml").write_text("x: &x [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"x{i}: &x{i} [" + ",".join(["*x" if i == 0 else f"*x{i - 1}"] * 9) + "]\n"
        for i in range(9)))
    with pytest.raises(ValueError, match="alias"):
        report([a], tmp_path / "out")


def test_cell_keys_unchanged(tmp_path: Path) -> None:
    assert Cell("mgda", "hard_sharing", 2).key == "mgda__hard_sharing__seed2"
    base = config_from_mapping(BASE)
    folder = cell_dir(tmp_path, base, Cell("mgda", "hard_sharing", 2))
    assert folder.parent == tmp_path / "cells" and folder.name.startswith("mgda__hard_sharing__")
