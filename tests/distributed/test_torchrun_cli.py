"""``manytask train`` under ``torchrun`` (2 gloo processes) trains as one process does."""

from __future__ import annotations

from pathlib import Path

import pytest
from _launch import CLI_FLAGS, CLI_RTOL, torchrun_train
from safetensors.torch import load_file

from manytask.cli import main

pytestmark = pytest.mark.slow


def test_torchrun_matches_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torchrun_train([], tmp_path / "two")
    assert main([*CLI_FLAGS, "--run-dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    ckpt = Path("checkpoints") / "epoch-0001" / "model.safetensors"
    one, two = load_file(tmp_path / "one" / ckpt), load_file(tmp_path / "two" / ckpt)
    assert set(one) == set(two)
    for key, value in one.items():
        assert float((two[key] - value).norm() / value.norm()) <= CLI_RTOL, key
