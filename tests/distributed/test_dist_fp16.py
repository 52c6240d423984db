"""fp16 with the gradient scaler under two gloo processes trains as one process, and an
overflow on one rank's shard skips the step on every rank together (same scale after)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import _fp16_worker  # noqa: E402
from _launch import launch  # noqa: E402

pytestmark = pytest.mark.slow
# Under fp16 autocast a weight's gradient (a sum over the samples) is rounded to float16
# (2^-11 relative): two ranks round their sums over 8 samples, one process its sum over 16,
# so the runs agree to float16 precision (measured: at most 4.2e-4 of the largest value).
RTOL = 2e-3


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp16")
    launch(HERE / "_fp16_worker.py", [str(out)])
    return out


@pytest.mark.parametrize("name", list(_fp16_worker.CONFIGS))
def test_fp16_two_processes_match_one_and_skip_together(launched: Path, name: str) -> None:
    ref = _fp16_worker.run_config(name)
    ranks = [load_file(launched / f"{name}-{r}.safetensors") for r in range(2)]
    # the first step overflowed (rank 1's half only, under two processes) and was skipped
    assert ref["counts"].tolist() == [_fp16_worker.STEPS - 1, 1]
    assert float(ref["scale"]) == 2.0**15
    for got in ranks:
        assert torch.equal(got["counts"], ref["counts"]) and torch.equal(got["scale"],
                                                                          ref["scale"])
        assert torch.isnan(got["weights"][0]).all() and not torch.isnan(got["weights"][1:]).any()
    for key in ranks[0]:  # every rank holds the same weights and method state, bit for bit
        torch.testing.assert_close(ranks[1][key], ranks[0][key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)
    got = ranks[0]
    for key, value in ref.items():
        if value.is_floating_point():
            scale = float(value.nan_to_num().abs().max()) or 1.0
            torch.testing.assert_close(got[key], value, rtol=RTOL, atol=RTOL * scale,
                                       equal_nan=True, msg=key)
