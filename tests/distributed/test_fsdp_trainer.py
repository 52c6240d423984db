"""The Trainer with the shared part sharded by FSDP2 (``shard="fsdp"``): two gloo processes
write the same whole checkpoints as one process without sharding, on steps where a rank has no
label at all; a sharded run resumes where it stopped; ``shard="fsdp"`` is refused where it
cannot work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _fsdp_trainer_worker as worker  # noqa: E402
from _launch import launch  # noqa: E402
from _worker import tasks  # noqa: E402

from manytask.models import HardSharing  # noqa: E402
from manytask.training import Trainer  # noqa: E402

RTOL = 1e-6
LAST = Path("checkpoints") / f"epoch-{worker.EPOCHS - 1:04d}"
FILES = ("model.safetensors", "optimizer.safetensors", "balancer.safetensors")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed")
    out = tmp_path_factory.mktemp("fsdp_trainer")
    launch(HERE / "_fsdp_trainer_worker.py", [str(out)], timeout=300)
    return out


def assert_close_states(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                        rtol: float) -> None:
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        scale = float(value.abs().max()) if value.numel() else 1.0
        torch.testing.assert_close(got[key], value, rtol=rtol, atol=rtol * (scale or 1.0),
                                   msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(worker.CONFIGS))
def test_sharded_trainer_writes_the_unsharded_checkpoints(
    launched: Path, tmp_path: Path, name: str
) -> None:
    """Model, optimiser moments and method state, whole, equal one unsharded process's."""
    worker.fit(name, tmp_path / name)
    for file in FILES:
        got = load_file(launched / name / LAST / file)
        ref = load_file(tmp_path / name / LAST / file)
        assert_close_states(got, ref, RTOL)


@pytest.mark.slow
def test_sharded_run_resumes_where_it_stopped(launched: Path) -> None:
    """Stopped after one epoch and resumed (the whole checkpoint cut back into the shards):
    the same checkpoint as the run that never stopped, bit for bit."""
    for file in FILES:
        got = load_file(launched / "resumed" / LAST / file)
        ref = load_file(launched / worker.RESUMED / LAST / file)
        assert set(got) == set(ref)
        for key, value in ref.items():
            assert torch.equal(got[key], value), (file, key)


def test_shard_fsdp_needs_several_processes() -> None:
    model = HardSharing(tasks(), 8, hidden=(4,))
    with pytest.raises(ValueError, match="2 or more processes"):
        Trainer(model, tasks(), "equal", shard="fsdp", progress=False)
    with pytest.raises(ValueError, match="shard must be one of"):
        Trainer(model, tasks(), "equal", shard="zero3", progress=False)  # type: ignore[arg-type]
