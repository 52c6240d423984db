"""Two gloo processes on CPU train as one process on the same global batches.

One launch of two worker processes (``_worker.py``, torchrun's environment variables) runs
every configuration; the test process runs the same ones alone and compares. The workers also
write checkpoints (rank 0 only) and resume a run that one process wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _worker  # noqa: E402

pytestmark = pytest.mark.slow
RTOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    paths = {name: root / name for name in ("out", "fresh", "resume")}
    paths["out"].mkdir()
    _worker.fit(str(paths["resume"]), 2, resume=False)  # one process writes epochs 0-1
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, str(HERE / "_worker.py")]
    args += [str(paths[n]) for n in ("out", "fresh", "resume")]
    procs = [
        subprocess.Popen(
            args,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log}"
    return paths


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("name", list(_worker.CONFIGS))
def test_two_processes_match_one(launched: dict[str, Path], name: str) -> None:
    ref = _worker.run_config(name)
    got = load_file(launched["out"] / f"{name}.safetensors")
    assert set(got) == set(ref)
    w_ref, w_got = ref.pop("weights"), got.pop("weights")
    steps = _worker.STEPS_PER_EPOCH * _worker.EPOCHS
    assert w_ref.shape == (steps, 3)
    # task c is labelled on rank 0 only: the method must still see it at every step
    assert not torch.isnan(w_ref).any() and not torch.isnan(w_got).any()
    torch.testing.assert_close(w_got, w_ref, rtol=RTOL, atol=RTOL * float(w_ref.abs().max()))
    for key, value in ref.items():
        if value.is_floating_point():
            assert _rel(got[key], value) <= RTOL, key
        else:
            assert torch.equal(got[key], value), key


def test_the_methods_did_move_the_weights(launched: dict[str, Path]) -> None:
    # guards against a vacuous match: training changed the parameters, differently per method
    finals = [
        load_file(launched["out"] / f"{n}.safetensors")["param/shared.0.weight"]
        for n in _worker.CONFIGS
    ]
    torch.manual_seed(0)
    start = _worker.HardSharing(_worker.tasks(), 8, hidden=(16, 16)).state_dict()["shared.0.weight"]
    for final in finals:
        assert _rel(final, start.double()) > 1e-3
    assert _rel(finals[0], finals[2]) > 1e-3  # equal vs MGDA


def test_only_rank_zero_writes_checkpoints(launched: dict[str, Path]) -> None:
    saves = [json.loads((launched["out"] / f"saves-{r}.json").read_text()) for r in range(2)]
    assert saves[0] == [0, 1, 2, 3]  # fresh run: epochs 0, 1; resumed run: epochs 2, 3
    assert saves[1] == []
    ckpts = launched["fresh"] / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch-0000", "epoch-0001", "latest"]
    rows = (launched["fresh"] / "steps.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * _worker.STEPS_PER_EPOCH  # header + one row per step, once


def test_resume_on_another_number_of_processes(
    launched: dict[str, Path], tmp_path: Path
) -> None:
    straight = _worker.fit(str(tmp_path / "straight"), 4, resume=False)
    # written by two processes, resumed by one (in a copy: other tests read the original)
    shutil.copytree(launched["fresh"], tmp_path / "copy")
    resumed_alone = _worker.fit(str(tmp_path / "copy"), 4, resume=True)
    # written by one process, resumed by two
    resumed_by_two = load_file(launched["out"] / "resumed.safetensors")
    for key, value in straight.items():
        assert _rel(resumed_alone[key], value) <= RTOL, key
        assert _rel(resumed_by_two[key], value) <= RTOL, key
