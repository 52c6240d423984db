"""Everything for fine-tuning the top layers of a sentence encoder on the text tasks: cached
lower-layer states (:mod:`manytask.data.hidden_states`), batches, and a factory of
:class:`~manytask.models.encoder_top.EncoderTop` models.

Memory: the batches hold every split padded to the longest cached sentence, ``N x L x H``
float16 numbers (1,000 sentences of up to 64 tokens at H = 384: 49 MB).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..data.encoders import MINILM, load_minilm
from ..data.hidden_states import SPLITS, HiddenStateCache, LowerEncoder, unpack
from ..data.text import MixedTaskBatches, TextTask, stacked_batches
from ..models.encoder_top import EncoderTop
from ..transformer_layers import check_top_layers, encoder_layers


class FinetuneData(NamedTuple):
    """What :func:`prepare_finetune` returns (unpacks as a 4-tuple)."""

    model_factory: Callable[..., EncoderTop]
    train: MixedTaskBatches
    val: Any
    test: Any


def prepare_finetune(
    text_tasks: Sequence[TextTask],
    cache_dir: str | Path,
    max_length: int,
    n_layers: int,
    batch_size: int,
    tasks_per_batch: int,
    temperature: float,
    seed: int,
    *,
    dtype: torch.dtype = torch.float16,
    load: Callable[[], tuple[Any, Any]] = load_minilm,
    model_name: str = MINILM,
    encode_batch_size: int = 64,
) -> FinetuneData:
    """Cached lower-layer states of every task split, batches, and a model factory.

    ``model_factory(**kwargs)`` returns a fresh :class:`EncoderTop` for the tasks, its layers
    copies of the encoder's top ``n_layers`` (keyword arguments go to :class:`EncoderTop`:
    ``hidden``, ``head_hidden``, ``normalize``, ``dropout``). ``train`` mixes
    ``tasks_per_batch`` tasks per batch (temperature sampling); ``val`` and ``test`` stack the
    tasks. ``load`` returns ``(model, tokenizer)`` (default: the bundled MiniLM, offline);
    states are cached in ``cache_dir`` in ``dtype``.
    """
    if not text_tasks:
        raise ValueError("prepare_finetune: no text tasks")
    names = [t.name for t in text_tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"prepare_finetune: task names repeat: {names}")
    model, tokenizer = load()
    total = len(encoder_layers(model, "prepare_finetune"))
    n = check_top_layers(n_layers, total, "prepare_finetune")
    lower = LowerEncoder(
        model,
        tokenizer,
        total - n,
        max_length=max_length,
        batch_size=encode_batch_size,
        dtype=dtype,
        name=model_name,
    )
    cache = HiddenStateCache(cache_dir)
    ragged = {
        t.name: {s: cache.get(lower, t.name, s, t.split(s).texts) for s in SPLITS}
        for t in text_tasks
    }
    # one padded length for all tasks: MixedTaskBatches concatenates their rows
    length = max(int(r[s]["lengths"].max()) for r in ragged.values() for s in SPLITS)
    inputs: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
    for name, splits in ragged.items():
        for s in SPLITS:
            hidden, mask = unpack(splits[s]["tokens"], splits[s]["lengths"], length)
            inputs[s][name] = {"hidden": hidden, "mask": mask}
    labels = {s: {t.name: t.split(s).labels for t in text_tasks} for s in SPLITS}
    tasks = [t.task() for t in text_tasks]
    layers = encoder_layers(model, "prepare_finetune")
    # keep only the top layers (not the whole encoder) alive in the factory
    top = [copy.deepcopy(layer) for layer in layers[total - n :]]
    width = int(model.config.hidden_size)

    def model_factory(**kwargs: Any) -> EncoderTop:
        fresh = [copy.deepcopy(layer).requires_grad_(True) for layer in top]
        return EncoderTop(tasks, fresh, width, **kwargs)

    train = MixedTaskBatches(
        inputs["train"],
        labels["train"],
        batch_size,
        tasks_per_batch=min(tasks_per_batch, len(tasks)),
        temperature=temperature,
        seed=seed,
    )
    return FinetuneData(
        model_factory,
        train,
        stacked_batches(inputs["val"], labels["val"], batch_size),
        stacked_batches(inputs["test"], labels["test"], batch_size),
    )
