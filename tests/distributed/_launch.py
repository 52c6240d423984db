"""Launch a worker script as two (or more) processes with torchrun's environment variables,
or ``manytask train`` under torchrun itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A small `manytask train` for the command-line runs under torchrun. float32 (the command
# line's dtype): one process and two round differently (a sum over 64 samples against two
# sums over 32) by about 1e-7 per step; its 8 steps stay within CLI_RTOL.
CLI_RTOL = 1e-5
CLI_FLAGS = [
    "train",
    "--train-size", "256",
    "--epochs", "2",
    "--batch-size", "64",
    "--hidden", "32",
    "--balancer", "mgda",
    "--no-progress",
]  # fmt: skip


def torchrun_train(extra: list[str], run_dir: Path) -> None:
    """``manytask train`` with :data:`CLI_FLAGS` and ``extra`` as two torchrun processes;
    fails with their output unless it succeeds with rank 0 alone printing the results."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "manytask.cli", *CLI_FLAGS, *extra, "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("test results:") == 1  # rank 0 alone prints


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(script: Path, args: list[str], world: int = 2, timeout: float = 300) -> None:
    """Run ``script args`` once per rank (gloo, one thread each); fail with every rank's log
    if one of them fails."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:  # a rank waits in a collective another never joins
        for p in procs:
            p.kill()
        raise AssertionError(f"{script.name} did not finish in {timeout} s") from None
    failed = [(r, log) for r, (p, log) in enumerate(zip(procs, logs, strict=True))
              if p.returncode != 0]
    assert not failed, "\n".join(f"rank {r} failed:\n{log}" for r, log in failed)
