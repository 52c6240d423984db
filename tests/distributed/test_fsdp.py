"""The shared part sharded with FSDP2 (``fully_shard``) across two gloo processes trains as
one process without sharding, for every method: the exact Gramian is a sum over parameter
slices (``sharded_gramian``), feature-level information is reduced as without FSDP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _fsdp_worker  # noqa: E402
from _launch import launch  # noqa: E402

pytestmark = pytest.mark.slow
RTOL = 1e-6


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed")
    out = tmp_path_factory.mktemp("fsdp")
    launch(HERE / "_fsdp_worker.py", [str(out)], timeout=300)  # a hang fails, after 5 min
    return out


@pytest.mark.parametrize("name", list(_fsdp_worker.CONFIGS))
def test_sharded_two_processes_match_one_unsharded(launched: Path, name: str) -> None:
    ref = _fsdp_worker.run_config(name)
    got = load_file(launched / f"{name}.safetensors")
    assert set(got) == set(ref)
    w_ref, w_got = ref.pop("weights"), got.pop("weights")
    assert not torch.isnan(w_ref).any()  # task c (labelled on rank 0 only) is seen each step
    torch.testing.assert_close(w_got, w_ref, rtol=RTOL, atol=RTOL * float(w_ref.abs().max()))
    for key, value in ref.items():
        if value.is_floating_point():
            scale = float(value.nan_to_num().abs().max()) or 1.0  # a state may hold NaN
            torch.testing.assert_close(got[key], value, rtol=RTOL, atol=RTOL * scale,
                                       equal_nan=True, msg=key)
        else:
            assert torch.equal(got[key], value), key
