"""Bad configurations and bad inputs are rejected before (or while) reading, with clear names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from manytask.merging import MergeConfig, NonFiniteTensorError, merge, merge_state_dicts


def cfg(base, models, method="ties", **extra):
    return {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"density": 0.5}} for m in models],
        **extra,
    }


def test_misspelt_parameter_is_an_error_with_a_hint(family, tmp_path: Path) -> None:
    base, models, _, _ = family(2)
    c = cfg(base, models)
    c["models"][0]["parameters"] = {"densty": 0.5}
    with pytest.raises(ValueError, match=r"models\[0\].*'densty' \(did you mean 'density'\?\)"):
        merge(c, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [1.5, 0.0, -0.1])
def test_out_of_range_density(value: float) -> None:
    with pytest.raises(ValueError, match="density must be"):
        MergeConfig.from_dict({"merge_method": "ties", "base_model": "b",
                               "models": [{"model": "a", "parameters": {"density": value}}]})


def test_wrong_types_and_unknown_keys() -> None:
    base = {"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}]}
    with pytest.raises(TypeError, match="lambda must be a number"):
        MergeConfig.from_dict({**base, "parameters": {"lambda": True}})
    with pytest.raises(ValueError, match=r"give either 'models' or 'slices'"):
        MergeConfig.from_dict({**base, "slices": []})
    with pytest.raises(ValueError, match=r"'modules' \(mergekit\) is not supported; list"):
        MergeConfig.from_dict({**base, "modules": {}})
    with pytest.raises(ValueError, match=r"unknown key.*'slice' \(did you mean 'slices'"):
        MergeConfig.from_dict({**base, "slice": []})
    with pytest.raises(ValueError, match="unknown merge method 'tie'"):
        MergeConfig.from_dict({**base, "merge_method": "tie"})
    with pytest.raises(ValueError, match="needs a base_model"):
        MergeConfig.from_dict({"merge_method": "ties", "models": [{"model": "a"}]})
    with pytest.raises(ValueError, match="needs exactly 1 model"):
        MergeConfig.from_dict({**base, "merge_method": "slerp", "parameters": {"t": 0.5},
                               "models": [{"model": "a"}, {"model": "c"}]})
    with pytest.raises(ValueError, match="'t' is required"):
        MergeConfig.from_dict({**base, "merge_method": "slerp"})
    with pytest.raises(ValueError, match="dtype must be one of"):
        MergeConfig.from_dict({**base, "dtype": "float8"})
    with pytest.raises(ValueError, match="density \\+/- epsilon"):
        MergeConfig.from_dict({**base, "merge_method": "della", "models": [
            {"model": "a", "parameters": {"density": 0.1, "epsilon": 0.2}}]})


def test_shape_mismatch_names_the_tensor(family, tmp_path: Path) -> None:
    base, models, _, sds = family(2)
    sd = dict(sds[1])
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(24, 15)
    save_file(sd, str(models[1] / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*\(24, 15\)"):
        merge(cfg(base, models), tmp_path / "out")


def test_missing_tensor_and_dtype_mismatch(family, tmp_path: Path) -> None:
    base, models, _, sds = family(2)
    sd = {k: v for k, v in sds[0].items() if k != "model.norm.weight"}
    save_file(sd, str(models[0] / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*'model\.norm\.weight'"):
        merge(cfg(base, models), tmp_path / "out")
    save_file({k: v.half() for k, v in sds[0].items()}, str(models[0] / "model.safetensors"))
    with pytest.raises(ValueError, match=r"stores torch\.float16.*dtype_mismatch: cast"):
        merge(cfg(base, models), tmp_path / "out")
    merge(cfg(base, models, dtype_mismatch="cast"), tmp_path / "out")


def test_vocabulary_mismatch(family, tmp_path: Path) -> None:
    base, models, base_sd, sds = family(1)
    sd = dict(sds[0])
    extra = torch.randn(3, 16)
    sd["model.embed_tokens.weight"] = torch.cat([sd["model.embed_tokens.weight"], extra])
    save_file(sd, str(models[0] / "model.safetensors"))
    c = cfg(base, models, method="task_arithmetic")
    c["models"][0]["parameters"] = {}
    with pytest.raises(ValueError, match=r"35 vocabulary rows.*has 32.*embed_mismatch"):
        merge(c, tmp_path / "out")
    merge({**c, "embed_mismatch": "base"}, tmp_path / "out")
    from safetensors.torch import load_file

    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert out["model.embed_tokens.weight"].shape == (32, 16)
    assert torch.allclose(out["model.embed_tokens.weight"], sds[0]["model.embed_tokens.weight"])

    # A model with fewer rows: the missing rows come from the base (a zero task vector).
    small = {k: v[:30] if k == "lm_head.weight" else v for k, v in sds[0].items()}
    out2 = merge_state_dicts("task_arithmetic", [small], base=base_sd, embed_mismatch="base")
    assert torch.allclose(out2["lm_head.weight"][30:], base_sd["lm_head.weight"][30:])
    assert torch.allclose(out2["lm_head.weight"][:30], small["lm_head.weight"])


def test_nan_is_reported_with_the_tensor_name(family, tmp_path: Path) -> None:
    base, models, _, sds = family(2)
    sd = dict(sds[1])
    sd["model.layers.1.self_attn.k_proj.weight"][3, 2] = float("nan")
    save_file(sd, str(models[1] / "model.safetensors"))
    with pytest.raises(NonFiniteTensorError,
                       match=r"'model\.layers\.1\.self_attn\.k_proj\.weight' of model .*m1.*row 3"):
        merge(cfg(base, models), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_pickle_only_when_allowed(family, tmp_path: Path) -> None:
    base, models, _, sds = family(2)
    (models[1] / "model.safetensors").unlink()
    torch.save(sds[1], models[1] / "pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle"):
        merge(cfg(base, models), tmp_path / "out")
    merge(cfg(base, models, allow_pickle=True), tmp_path / "out")


def test_yaml_round_trip(family, tmp_path: Path) -> None:
    base, models, _, _ = family(2)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg(base, models, shard_size="1KB")))
    report = merge(str(path), tmp_path / "out")
    assert len(report.files) > 1
    written = yaml.safe_load((tmp_path / "out" / "manytask_merge.yaml").read_text())
    assert written["merge_method"] == "ties" and written["shard_size"] == 1000
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
