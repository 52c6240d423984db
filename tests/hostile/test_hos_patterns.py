"""Class 2: LoRA ``alpha_pattern``/``rank_pattern`` keys that could stall a merge (issue 16).

Keys are matched as PEFT matches module names (the full name or a dotted suffix, checked
here against ``peft.utils.other.get_pattern_key`` itself), by string comparison: a crafted
key runs in bounded time or is refused by name; a key that is a regular expression is
refused rather than silently read another way.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hos_helpers import family, merge_config, raises_clear, write_adapter
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file

from manytask.merging import merge
from manytask.merging.lora import pattern_matches, pattern_value

MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.10.self_attn.q_proj",
    "model.layers.1.mlp.down_proj",
    "q_proj",
    "lm_head",
    "transformer.h.0.attn.c_attn",
]
KEYS = ["q_proj", "self_attn.q_proj", "layers.0.self_attn.q_proj", "proj", "down_proj",
        "lm_head", "h.0.attn.c_attn", "attn", "0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("module", MODULES)
def test_matching_agrees_with_peft(module: str) -> None:
    for key in KEYS:
        assert pattern_matches(key, module) == (get_pattern_key([key], module) == key), key
    # first matching key in file order wins, as in PEFT
    values = {k: float(i) for i, k in enumerate(KEYS)}
    chosen = get_pattern_key(list(values), module)
    assert pattern_value(values, module, -1.0) == values.get(chosen, -1.0)


# keys that backtrack exponentially as regular expressions (time doubles per character)
CRAFTED = ["(a+)+$", "(a|aa)*c", "(.*a){20}", "((a*)*)*b", "(x+x+)+y", "a" * 5000 + "(b|"]


@pytest.mark.parametrize("key", CRAFTED, ids=[f"crafted{i}" for i in range(len(CRAFTED))])
def test_crafted_pattern_is_refused_fast(tmp_path: Path, key: str) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter", alpha_pattern={key: 8})
    began = time.perf_counter()
    raises_clear(lambda: merge(merge_config(base, [adapter]), tmp_path / "out"),
                 "alpha_pattern", "not a module name")
    assert time.perf_counter() - began < 5
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("length", [10, 1000, 100_000])
def test_long_literal_key_runs_in_linear_time(length: int) -> None:
    module = "a." * length + "q_proj"
    key = "a." * (length - 1) + "b"
    began = time.perf_counter()
    for _ in range(100):
        assert not pattern_matches(key, module)
    assert time.perf_counter() - began < 2


@pytest.mark.parametrize(
    ("patterns", "alpha0", "alpha1"),
    [
        ({}, 4, 4),
        ({"layer.0": 16}, 16, 4),
        ({"1": 2}, 4, 2),  # dotted suffix "1" of "layer.1"
        ({"ayer.1": 2}, 4, 4),  # not a dotted suffix: no match
        ({"layer.1": 2, "1": 99}, 4, 2),  # first key in file order wins
    ],
)
def test_alpha_pattern_is_applied(tmp_path: Path, patterns: dict, alpha0: float,
                                  alpha1: float) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter", alpha_pattern=patterns)
    config = merge_config(base, [adapter])
    config["models"][0]["parameters"]["weight"] = 1.0
    merge(config, tmp_path / "out")
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    base_sd = load_file(str(base / "model.safetensors"))
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    for layer, alpha in (("layer.0", alpha0), ("layer.1", alpha1)):
        a = ad[f"base_model.model.{layer}.lora_A.weight"]
        b = ad[f"base_model.model.{layer}.lora_B.weight"]
        expected = base_sd[f"{layer}.weight"] + alpha / 2 * (b @ a)  # Hu et al. Eq. 3, r = 2
        torch.testing.assert_close(out[f"{layer}.weight"], expected)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"rank_pattern": {"layer.0": 4}}, "rank 2 in its tensors but 4"),
        ({"r": 3}, "rank 2 in its tensors but 3"),
        ({"rank_pattern": {"layer.0": 0}}, "rank_pattern"),
        ({"rank_pattern": {"(a+)+": 2}}, "not a module name"),
        ({"rank_pattern": ["layer.0"]}, "rank_pattern must be an object"),
        ({"alpha_pattern": {"layer.0": float("inf")}}, "alpha_pattern"),
        ({"alpha_pattern": {"": 2}}, "not a module name"),
        ({"r": 0}, "r must be a positive integer"),
    ],
)
def test_bad_patterns_and_ranks(tmp_path: Path, config: dict, needle: str) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter", **config)
    raises_clear(lambda: merge(merge_config(base, [adapter]), tmp_path / "out"), needle)


def test_rank_pattern_that_agrees_is_accepted(tmp_path: Path) -> None:
    base, _ = family(tmp_path, 0)
    adapter = write_adapter(tmp_path / "adapter", r=8, rank_pattern={"layer.0": 2, "1": 2})
    merge(merge_config(base, [adapter]), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
