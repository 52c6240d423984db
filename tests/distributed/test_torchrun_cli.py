"""``manytask train`` under ``torchrun`` (2 gloo processes) trains as one process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from manytask.cli import main

pytestmark = pytest.mark.slow

# float32 here (the command line's dtype): one process and two round differently (a sum over
# 64 samples against two sums over 32), by about 1e-7 per step.
RTOL = 1e-5
FLAGS = [
    "train",
    "--train-size", "256",
    "--epochs", "2",
    "--batch-size", "64",
    "--hidden", "32",
    "--balancer", "mgda",
    "--no-progress",
]  # fmt: skip


def test_torchrun_matches_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "manytask.cli", *FLAGS, "--run-dir", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("test results:") == 1  # rank 0 alone prints

    assert main([*FLAGS, "--run-dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    ckpt = Path("checkpoints") / "epoch-0001" / "model.safetensors"
    one, two = load_file(tmp_path / "one" / ckpt), load_file(tmp_path / "two" / ckpt)
    assert set(one) == set(two)
    for key, value in one.items():
        assert float((two[key] - value).norm() / value.norm()) <= RTOL, key
