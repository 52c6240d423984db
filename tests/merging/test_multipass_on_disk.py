"""Multi-pass merges read from disk; the fused TIES combine; the allocator setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import manytask.merging.engine as engine
from manytask.merging import merge, merge_state_dicts
from manytask.merging.allocator import reuse_freed_memory

MULTI_PASS = {
    "ties": {"density": 0.3},
    "breadcrumbs": {"density": 0.5, "gamma": 0.05},
    "model_stock": {},
    "metagpt": {},
    "consensus": {"mask_lambda": 0.4},
}


def _config(method: str, base: Path, models: list[Path], params: dict) -> dict:
    return {"merge_method": method, "base_model": str(base),
            "models": [{"model": str(m), "parameters": dict(params)} for m in models]}


@pytest.mark.parametrize("method", sorted(MULTI_PASS))
def test_re_read_tensors_match_in_memory(method, family, tmp_path: Path, monkeypatch) -> None:
    # safetensors hands out copy-on-write views of its memory map: a method that turned them
    # into deltas in place would read deltas, not weights, on its next pass over a tensor that
    # is too large to keep (every tensor here, with CACHE_ELEMENTS forced to 0).
    base, models, base_sd, sds = family(3)
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 64)  # several chunks per matrix
    monkeypatch.setattr(engine, "CACHE_ELEMENTS", 0)
    merge(_config(method, base, models, MULTI_PASS[method]), tmp_path / "out")
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = merge_state_dicts(method, sds, base=base_sd,
                             model_parameters=[MULTI_PASS[method]] * 3)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), (method, k)


@pytest.mark.parametrize("method", sorted(MULTI_PASS))
def test_unchanged_models_merge_to_the_base(method, family, tmp_path: Path,
                                            monkeypatch) -> None:
    # Zero task vectors must give back the base exactly, whatever the number of passes.
    base, _, base_sd, _ = family(1)
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(engine, "CACHE_ELEMENTS", 0)
    merge(_config(method, base, [base, base], MULTI_PASS[method]), tmp_path / "out")
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k, v in base_sd.items():
        assert torch.equal(got[k], v), (method, k)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della_linear", "della"])
def test_l1_rescaling_reuses_the_masks_of_its_first_pass(method, monkeypatch) -> None:
    # mergekit's l1 rescaling reads each tensor twice. Chunks kept in memory reuse their mask;
    # chunks read again get it back from the bits the first pass stored. Both must give the
    # same merge, and one whose masks match the (paper-convention) inverse-rescaled draws.
    g = torch.Generator().manual_seed(5)
    base = {"w": torch.randn(40, 30, generator=g), "v": torch.randn(50, generator=g)}
    models = [{k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
              for _ in range(3)]
    mp = [{"density": 0.4, "epsilon": 0.1}] * 3 if "della" in method else [{"density": 0.4}] * 3
    monkeypatch.setattr(engine, "CHUNK_ELEMENTS", 64)
    out = {}
    for cache in (1 << 22, 0):
        monkeypatch.setattr(engine, "CACHE_ELEMENTS", cache)
        out[cache] = merge_state_dicts(method, models, base=base, model_parameters=mp,
                                       parameters={"convention": "mergekit"})
        out[("mask", cache)] = merge_state_dicts(
            method, models, base=base, model_parameters=mp,
            parameters={"convention": "mergekit", "rescale": "none"})
    for k in base:
        assert torch.equal(out[1 << 22][k], out[0][k]), k
        assert torch.equal(out[("mask", 1 << 22)][k], out[("mask", 0)][k]), k
    if method.endswith("linear"):  # the kept entries are those of the inverse-rescaled merge
        single = [models[0]]
        inv = merge_state_dicts(method, single, base=base, model_parameters=mp[:1])
        l1 = merge_state_dicts(method, single, base=base, model_parameters=mp[:1],
                               parameters={"convention": "mergekit"})
        for k in base:
            assert torch.equal(inv[k] == base[k], l1[k] == base[k]), k


@pytest.mark.parametrize("convention", ["paper", "mergekit"])
@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_unit_weight_shortcut_is_exact(method, convention) -> None:
    # With equal weights the disjoint mean does not depend on their value; weights of 2 (exact
    # in binary) take the general path, weights of 1 the shortcut: results must be identical.
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(40, 30, generator=g)}
    models = [{"w": base["w"] + torch.randn(40, 30, generator=g)} for _ in range(3)]
    models[1]["w"][:5] = base["w"][:5]  # rows one model leaves unchanged
    models[2]["w"][5:10] = 2 * base["w"][5:10] - models[0]["w"][5:10]  # cancelling signs
    out = {}
    for w in (1.0, 2.0):
        params = [{"weight": w, "density": 0.5}] * 3
        out[w] = merge_state_dicts(method, models, base=base, model_parameters=params,
                                   parameters={"convention": convention,
                                               "normalize": True})["w"]
    assert torch.equal(out[1.0], out[2.0])


def test_reuse_freed_memory() -> None:
    with pytest.raises(ValueError, match="trim_bytes"):
        reuse_freed_memory(-1)
    with pytest.raises(ValueError, match="trim_bytes"):
        reuse_freed_memory(True)
    assert isinstance(reuse_freed_memory(64 << 20), bool)
