"""The run folder cannot be corrupted: refusals write nothing, one training at a time, resumed
runs keep their defining settings, logs are replaced whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manytask import HardSharing, Task
from manytask.cli import main
from manytask.training import Trainer
from manytask.training.logs import RunLog
from manytask.training.run_folder import LOCK, RunFolderError, RunLock, plan_run

TASKS = [Task.classification("a", 3), Task.regression("b")]


def _batches(n: int = 32) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = {"a": torch.randint(0, 3, (n,), generator=g), "b": torch.randn(n, 1, generator=g)}
    return [(x[i : i + 8], {k: v[i : i + 8] for k, v in y.items()}) for i in range(0, n, 8)]


def _trainer(run_dir: Path) -> Trainer:
    torch.manual_seed(0)
    return Trainer(HardSharing(TASKS, 4, hidden=(8,)), TASKS, "equal", run_dir=run_dir,
                   progress=False, log_every=1)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_folder_that_holds_anything_is_refused_and_left_untouched(tmp_path: Path) -> None:
    _trainer(tmp_path).fit(_batches(), 1)
    before = _tree(tmp_path)
    with pytest.raises(RunFolderError, match="is not empty"):
        _trainer(tmp_path).fit(_batches(), 2)
    assert _tree(tmp_path) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"todo\.txt"):
        _trainer(other).fit(_batches(), 1)


def test_resume_needs_a_checkpoint_and_if_exists_starts_afresh(tmp_path: Path) -> None:
    missing = tmp_path / "never"
    with pytest.raises(RunFolderError, match="no checkpoint"):
        _trainer(missing).fit(_batches(), 1, resume=True)
    assert not missing.exists()  # a refused command writes nothing
    trainer = _trainer(missing)
    trainer.fit(_batches(), 1, resume="if_exists")
    assert trainer.step == 4
    again = _trainer(missing)
    again.fit(_batches(), 2, resume="if_exists")
    assert again.step == 8  # resumed after epoch 0, not restarted


def test_if_exists_replaces_a_run_that_never_reached_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "steps.csv").write_text("step,epoch\n1,0\n1,0\n")  # a killed first epoch
    (tmp_path / "launcher.log").write_text("kept")  # a file of someone else
    trainer = _trainer(tmp_path)
    trainer.fit(_batches(), 1, resume="if_exists")
    rows = RunLog(tmp_path / "steps", ["step"]).read()
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert (tmp_path / "launcher.log").read_text() == "kept"


def test_overwrite_removes_only_a_runs_files(tmp_path: Path) -> None:
    _trainer(tmp_path).fit(_batches(), 2)
    trainer = _trainer(tmp_path)
    trainer.fit(_batches(), 1, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0000", "latest"
    ]
    (tmp_path / "mine.txt").write_text("x")
    before = _tree(tmp_path)
    with pytest.raises(RunFolderError, match=r"not a run's \(mine.txt\)"):
        _trainer(tmp_path).fit(_batches(), 1, overwrite=True)
    assert _tree(tmp_path) == before
    with pytest.raises(RunFolderError, match="exclude"):
        _trainer(tmp_path).fit(_batches(), 1, overwrite=True, resume=True)


_HOLD = """
import sys, time
from manytask.training.run_folder import RunLock
lock = RunLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_a_second_process_gets_a_clear_error_and_a_stale_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    holder = _python(_HOLD, str(tmp_path))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"in use by another training \\(process "
                                                 f"{holder.pid} "):
            _trainer(tmp_path).fit(_batches(), 1, resume="if_exists")
        with pytest.raises(RunFolderError, match="in use"):  # the flock, not the file, decides
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock file stays, naming a dead process, and its flock is gone with it
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == holder.pid
    with pytest.warns(RuntimeWarning, match=f"stale lock of process {holder.pid}"):
        _trainer(tmp_path).fit(_batches(), 1, resume="if_exists")
    assert not (tmp_path / LOCK).exists()  # released at the end of fit


def test_an_interrupted_log_rewrite_leaves_the_old_log(tmp_path: Path, monkeypatch) -> None:
    log = RunLog(tmp_path / "steps", ["step", "loss"])
    for step in range(1, 6):
        log.write({"step": step, "loss": 0.5})
    before = log.path.read_bytes()

    def killed(src: str, dst: object) -> None:
        raise KeyboardInterrupt  # as if the process died between the write and the rename

    monkeypatch.setattr(os, "replace", killed)  # the rewrite's rename (manytask.files)
    with pytest.raises(KeyboardInterrupt):
        log.truncate_after("step", 2)
    assert log.path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["steps.csv"]  # no temporary file left
    monkeypatch.undo()
    log.truncate_after("step", 2)
    assert log.path.read_text() == "step,loss\n1,0.5\n2,0.5\n"


# ----------------------------------------------------------------- settings on resume
BASE = ["train", "--train-size", "200", "--no-progress", "--hidden", "16", "--batch-size",
        "64", "--epochs", "1"]
DEFINING = [
    ("--seed", "1"), ("--batch-size", "32"), ("--train-size", "300"), ("--lr", "0.01"),
    ("--balancer", "mgda"), ("--balancer-param", "weights={left: 2}"), ("--arch", "mmoe"),
    ("--hidden", "32"), ("--tasks", "right", "left"), ("--missing-rate", "0.1"),
    ("--mode", "feature"), ("--data", "files"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert main([*BASE, "--run-dir", str(run), "--balancer", "fixed"]) == 0
    return run


@pytest.mark.parametrize("change", DEFINING, ids=[c[0] for c in DEFINING])
def test_resume_with_a_defining_setting_changed_is_refused(
    trained: Path, change: tuple[str, ...], capsys
) -> None:
    before = _tree(trained)
    args = [*BASE, "--run-dir", str(trained), "--resume", "--balancer", "fixed", *change]
    if change[0] == "--data":  # another data set: declared files (refused before reading)
        other = trained.parent / "files.yaml"
        other.write_text("dataset: {table: {file: absent.csv, split: {ratio: [0.8, 0.1, "
                         "0.1]}, numeric: [x], tasks: [{name: y, kind: regression, label: y}]}}\n")
        args += ["--config", str(other)]
    assert main(args) == 2
    err = capsys.readouterr().err
    key = change[0][2:].replace("-", "_").replace("balancer_param", "balancer_params")
    assert "other settings" in err and key in err and len(err.strip().splitlines()) == 1
    assert _tree(trained) == before


def test_changeable_settings_are_recorded_in_the_history(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*BASE, "--run-dir", str(run)]) == 0
    assert main([*BASE[:-1], "2", "--log-every", "3", "--run-dir", str(run), "--resume"]) == 0
    lines = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    assert [e["action"] for e in lines] == ["start", "resume"]
    assert lines[1]["changed"] == {"epochs": [1, 2], "log_every": [10, 3],
                                   "resume": [False, True]}
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2


def test_plan_reads_only(tmp_path: Path) -> None:
    plan = plan_run(tmp_path / "new", resume="if_exists")
    assert not plan.resume and not (tmp_path / "new").exists()
