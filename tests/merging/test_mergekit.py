"""Agreement with mergekit (optional dependency) on small random Llama-style models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from manytask.merging import merge

pytest.importorskip("mergekit")

WEIGHTS = [1.0, 0.5, 0.7]
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = {
    "linear": ({}, [{"weight": w} for w in WEIGHTS], {}),
    "task_arithmetic": ({"lambda": 0.8}, [{"weight": w} for w in WEIGHTS], {}),
    "ties": ({"lambda": 0.9}, [{"weight": w, "density": 0.4} for w in WEIGHTS],
             {"convention": "mergekit"}),
    "breadcrumbs": ({}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in WEIGHTS],
                    {"convention": "mergekit"}),
    "breadcrumbs_ties": ({}, [{"weight": w, "density": 0.6, "gamma": 0.05} for w in WEIGHTS],
                         {"convention": "mergekit"}),
    "slerp": ({"t": 0.3}, [{}], {}),
    "model_stock": ({}, [{}, {}, {}], {}),
}


def run_mergekit(config: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False))
    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_agreement_with_mergekit(family, tmp_path: Path) -> None:
    base, models, _, _ = family(3)
    for name, (params, per_model, ours_only) in CASES.items():
        chosen = models[: len(per_model)]
        pairs = zip(chosen, per_model, strict=True)
        entries = [{"model": str(m), "parameters": p} for m, p in pairs]
        theirs_cfg = {"merge_method": name, "models": entries, "dtype": "float32",
                      "parameters": params}
        if name == "slerp":  # mergekit lists the base among the models for SLERP
            theirs_cfg["models"] = [{"model": str(base)}, {"model": str(chosen[0])}]
        if name != "linear":  # mergekit's linear would average the base too
            theirs_cfg["base_model"] = str(base)
        theirs = run_mergekit(theirs_cfg, tmp_path / f"kit_{name}")
        ours_cfg = {"merge_method": name, "models": entries,
                    "parameters": {**params, **ours_only}}
        if name != "linear":
            ours_cfg["base_model"] = str(base)
        merge(ours_cfg, tmp_path / f"ours_{name}")
        ours = load_file(str(tmp_path / f"ours_{name}" / "model.safetensors"))
        assert ours.keys() == theirs.keys(), name
        for k in ours:
            assert torch.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6), (name, k)
        shutil.rmtree(tmp_path / f"kit_{name}")
