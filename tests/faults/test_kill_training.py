"""SIGKILL a training process at random points and inside a checkpoint write; resume each time.

On CPU the resumed run must end with the parameters of a run that never stopped, bit for bit,
and a write killed half-way must leave the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manytask.training import Trainer, latest_checkpoint, load_checkpoint

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _train  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)  # as in the subprocesses: same kernels, same rounding
    return _train.train(tmp_path_factory.mktemp("straight"))


def _start(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_train.py"), str(run_dir), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stdout.read()
    return proc


def _finish(run_dir: Path) -> dict[str, torch.Tensor]:
    proc = _start(run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return load_file(run_dir / "final.safetensors")


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_random_kills_then_resume_match_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    rng = random.Random(20261123)
    killed = 0
    for _ in range(3):
        proc = _start(tmp_path)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        if (tmp_path / "final.safetensors").exists():
            break  # the run finished before the kill (a slow-start machine): nothing to resume
    assert killed >= 1
    _assert_identical(_finish(tmp_path), uninterrupted)


def test_kill_inside_a_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    proc = _start(tmp_path, "--stall-epoch", "2")
    deadline = time.monotonic() + 240
    while not (tmp_path / "stalled").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached the checkpoint of epoch 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / "checkpoints"
    # the write was interrupted: its temporary directory is there, half-full, and ignored
    partial = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-epoch-0002-")]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()
    assert not (partial[0] / "state.json").exists()
    assert not (ckpts / "epoch-0002").exists()
    previous = latest_checkpoint(tmp_path)
    assert previous is not None and previous.name == "epoch-0001"
    trainer = Trainer(_train.model(), _train.tasks(), "uncertainty")
    state = load_checkpoint(
        previous, model=trainer.model, optimizer=trainer.optimizer, balancer=trainer.balancer
    )
    assert state["epoch"] == 1 and state["step"] == 2 * 4
    _assert_identical(_finish(tmp_path), uninterrupted)


def _stall_then_kill(run_dir: Path, *extra: str) -> None:
    (run_dir / "stalled").unlink(missing_ok=True)
    proc = _start(run_dir, *extra)
    deadline = time.monotonic() + 240
    while not (run_dir / "stalled").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never stalled"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (run_dir / "stalled").unlink()


def test_kill_while_a_resume_rewrites_the_logs_keeps_them_whole(
    tmp_path: Path, uninterrupted: dict[str, torch.Tensor]
) -> None:
    straight = tmp_path / "straight"
    _finish(straight)
    run = tmp_path / "run"
    _stall_then_kill(run, "--stall-epoch", "2")  # step 10 logged, checkpoint at step 8
    before = (run / "steps.csv").read_bytes()
    assert before.startswith(b"step,") and b"\n10,2," in before
    _stall_then_kill(run, "--stall-rewrite")  # killed inside the rewrite that drops them
    assert (run / "steps.csv").read_bytes() == before  # not emptied, header kept
    _assert_identical(_finish(run), uninterrupted)
    assert (run / "steps.csv").read_bytes() == (straight / "steps.csv").read_bytes()
