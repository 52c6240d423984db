"""``manytask train --shard fsdp`` under ``torchrun`` (2 gloo processes) writes the checkpoints
and the saved model of a one-process run without sharding; ``--shard fsdp`` is refused, before
anything is read or written, where it cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _launch import CLI_FLAGS, CLI_RTOL, torchrun_train
from safetensors.torch import load_file

from manytask.cli import main
from manytask.training.pretrained import from_pretrained


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.slow
def test_torchrun_shard_fsdp_writes_what_one_process_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torchrun_train(["--shard", "fsdp"], tmp_path / "two")
    assert main([*CLI_FLAGS, "--run-dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    ckpt = Path("checkpoints") / "epoch-0001"
    for path in (ckpt / "model.safetensors", ckpt / "optimizer.safetensors",
                 Path("model") / "model.safetensors"):
        one, two = load_file(tmp_path / "one" / path), load_file(tmp_path / "two" / path)
        assert set(one) == set(two), path
        for key, value in one.items():
            assert two[key].dtype == value.dtype and two[key].shape == value.shape, key
            if value.is_floating_point() and value.numel() > 1:
                assert relative(two[key], value) <= CLI_RTOL, (path, key)
            else:
                assert torch.allclose(two[key], value, rtol=CLI_RTOL), (path, key)
    meta = [json.loads((tmp_path / run / "model" / "manytask.json").read_text())
            for run in ("one", "two")]
    assert meta[0] == meta[1]

    # the saved model of the sharded run predicts as the unsharded one's
    (model_one, tasks), (model_two, _) = (from_pretrained(tmp_path / r / "model")
                                          for r in ("one", "two"))
    x = torch.randn(32, meta[0]["build"]["in_features"])
    with torch.no_grad():
        out_one, out_two = model_one(x), model_two(x)
    for task in tasks:
        assert relative(out_two[task.name], out_one[task.name]) <= 10 * CLI_RTOL, task.name


@pytest.mark.parametrize("extra, words", [
    ([], "torchrun with 2 or more processes"),
    (["--cosine-every", "2"], "cosine_every"),
    (["--flat-rho", "0.05"], "flat_rho"),
    (["--precision", "fp16"], "fp16"),
])
def test_shard_fsdp_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    run = tmp_path / "run"
    assert main([*CLI_FLAGS, "--shard", "fsdp", *extra, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "shard" in err
    assert not run.exists()
