"""The merged folder loads with transformers (optional dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from manytask.merging import merge

transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_output_loads_with_auto_model(family, tmp_path: Path) -> None:
    base, models, _, sds = family(2)
    merge({"merge_method": "linear", "base_model": str(base),
           "models": [str(m) for m in models], "dtype": "bfloat16", "shard_size": "8KB"},
          tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()  # sharded output
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.config.model_type == "llama"
    got = model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    want = (sds[0]["model.layers.1.mlp.down_proj.weight"]
            + sds[1]["model.layers.1.mlp.down_proj.weight"]) / 2
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, atol=2e-2)
