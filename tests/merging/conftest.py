"""Builders of small checkpoints on disk for the merging tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 32,
    "rms_norm_eps": 1e-6,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
    "max_position_embeddings": 64,
}


def llama_shapes(hidden: int = 16, inter: int = 24, layers: int = 2, vocab: int = 32):
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in "qkvo":
            shapes[p + f"self_attn.{n}_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    return shapes


def random_family(n_models: int, seed: int = 0, scale: float = 0.1, dtype=torch.float32):
    """A random base state dict and ``n_models`` fine-tuned variants (base + small deltas)."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in llama_shapes().items()}
    models = [
        {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}
        for _ in range(n_models)
    ]
    cast = lambda sd: {k: v.to(dtype) for k, v in sd.items()}  # noqa: E731
    return cast(base), [cast(m) for m in models]


def write_model(folder: Path, sd: dict[str, Tensor], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config or LLAMA_CONFIG))
    return folder


@pytest.fixture
def family(tmp_path: Path) -> Callable[..., tuple[Path, list[Path], dict, list[dict]]]:
    """``family(n)`` writes a base and n variants; returns paths and the state dicts."""

    def make(n: int = 3, seed: int = 0, dtype=torch.float32):
        base, models = random_family(n, seed, dtype=dtype)
        bp = write_model(tmp_path / "base", base)
        (bp / "tokenizer.json").write_text('{"version": "1.0"}')
        mps = [write_model(tmp_path / f"m{i}", m) for i, m in enumerate(models)]
        return bp, mps, base, models

    return make
