"""The methods added from mergekit 0.1.5 agree with mergekit (a test dependency) on small
random Llama-style models, each configuration written as a mergekit user would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from manytask.merging import merge

pytest.importorskip("mergekit")


def run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False))
    return load_file(str(out / "model.safetensors"))


def run_ours(config: dict, out: Path) -> dict[str, torch.Tensor]:
    merge(config, out)
    return load_file(str(out / "model.safetensors"))


def assert_same(ours: dict, theirs: dict, label: str, rtol: float = 1e-5,
                atol: float = 1e-6) -> None:
    assert ours.keys() == theirs.keys(), label
    for k in ours:
        assert torch.isfinite(ours[k]).all(), (label, k)
        assert torch.allclose(ours[k], theirs[k], rtol=rtol, atol=atol), (
            label, k, float((ours[k] - theirs[k]).abs().max()))


def cases(base: Path, m: list[Path]) -> dict[str, dict[str, Any]]:
    b, m0, m1, m2 = str(base), str(m[0]), str(m[1]), str(m[2])
    return {
        "nuslerp_flat": {"merge_method": "nuslerp", "models": [
            {"model": m0, "parameters": {"weight": 0.3}},
            {"model": m1, "parameters": {"weight": 0.7}}]},
        "nuslerp_row_wise_base": {"merge_method": "nuslerp", "base_model": b,
                                  "parameters": {"nuslerp_flatten": False,
                                                 "nuslerp_row_wise": True}, "models": [
            {"model": m0, "parameters": {"weight": 0.4}},
            {"model": m1, "parameters": {"weight": 0.6}}]},
        "multislerp": {"merge_method": "multislerp", "models": [
            {"model": x, "parameters": {"weight": w}} for x, w in
            zip((m0, m1, m2), (1.0, 0.5, 0.7), strict=True)]},
        "karcher": {"merge_method": "karcher", "models": [{"model": x} for x in (m0, m1, m2)],
                    "parameters": {"max_iter": 20, "tol": 1e-7}},
        "sce_all": {"merge_method": "sce", "base_model": b,
                    "models": [{"model": x} for x in (m0, m1)]},
        "ram": {"merge_method": "ram", "base_model": b,
                "models": [{"model": x} for x in (m0, m1, m2)], "parameters": {"epsilon": 0.1}},
        "passthrough": {"merge_method": "passthrough",
                        "models": [{"model": m0, "parameters": {"scale": 0.5}}]},
    }


@pytest.mark.slow
def test_new_methods_agree_with_mergekit(family, tmp_path: Path) -> None:
    base, models, _, _ = family(3)
    for label, cfg in cases(base, models).items():
        theirs = run_mergekit({**cfg, "dtype": "float32"}, tmp_path / f"kit_{label}")
        ours = run_ours(cfg, tmp_path / f"ours_{label}")
        assert_same(ours, theirs, label)
