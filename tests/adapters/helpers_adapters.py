"""Tiny randomly initialised BERT and GPT-2 models (built here, nothing downloaded)."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from manytask.adapters import AdapterModel  # noqa: E402
from manytask.tasks import Task  # noqa: E402

TASKS = [Task.classification(f"t{i}", 3) for i in range(3)]
TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"]}
OUTPUT_TARGETS = {"bert": ["output.dense"], "gpt2": ["c_proj"]}  # Hyper-X: same sizes
POOLING = {"bert": "mean", "gpt2": "last"}
LAYER_METHODS = ["lora", "lora_per_task", "mtl_lora", "align_lora", "moa", "mor1e", "poly",
                 "mhr", "scalearn", "hyperx"]
PROMPT_METHODS = ["mpt", "task_prompt_vectors"]
EXTRA = {"mhr": {"n_splits": 2}}


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=64)
        return transformers.BertModel(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg).eval()


def build(name: str, kind: str = "bert", base: torch.nn.Module | None = None,
          **params: object) -> AdapterModel:
    base = copy.deepcopy(base) if base is not None else tiny(kind)
    targets = OUTPUT_TARGETS[kind] if name == "hyperx" else TARGETS[kind]
    kw = {**EXTRA.get(name, {}), **params}
    if name in PROMPT_METHODS:
        return AdapterModel(base, TASKS, name, pooling=POOLING[kind], **kw)
    return AdapterModel(base, TASKS, name, target_modules=targets, pooling=POOLING[kind], **kw)


def batch(seed: int = 1, n: int = 6, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 5:] = 0  # one padded example
    mask[3, 7:] = 0
    return {"input_ids": torch.randint(0, 60, (n, length), generator=g),
            "attention_mask": mask,
            "task_ids": torch.arange(n) % len(TASKS)}


def randomise(model: AdapterModel, seed: int = 2, scale: float = 0.3) -> None:
    """Every adapter tensor (trainable or buffer) set to random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if (".delta." in name or name.startswith("shared.method.")) and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)
