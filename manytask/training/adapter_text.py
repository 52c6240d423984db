"""Text tasks for a multi-task adapter on the frozen MiniLM (``manytask train`` with
``adapter:``): tokenised batches carrying each example's task index, and a factory of
:class:`~manytask.adapters.AdapterModel` models.

Every split is tokenised once, padded to ``max_length`` (the adapter model drops the columns
past the longest real sentence of each batch). Memory: three int64 tensors of ``N x
max_length`` per split (2,000 sentences of 64 tokens: 3 MB).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..adapters import ADAPTERS, AdapterModel
from ..data.encoders import load_minilm
from ..data.text import MixedTaskBatches, TextSplit, TextTask, stacked_batches
from ..registry import RegistryError

#: the targets of layer methods when none are given: attention's query and value (LoRA's)
DEFAULT_TARGETS = ("query", "value")
#: methods that need more than text (MoR1E's intuition vectors: see check_adapter)
NOT_FROM_TEXT = {
    "scalearn": "it scales trained source adapters (stage 1), which the CLI does not train; "
                "use the Python API (ScaLearn.load_sources)",
}


class AdapterData(NamedTuple):
    """What :func:`prepare_adapter_text` returns."""

    model_factory: Callable[[], AdapterModel]
    train: MixedTaskBatches
    val: Any
    test: Any


def check_adapter(method: str, params: Mapping[str, Any],
                  targets: Sequence[str] | None) -> dict[str, Any]:
    """The validated parameters of adapter ``method`` for text training (reads no data);
    raises :class:`~manytask.registry.RegistryError` (one line) for what cannot run here."""
    values = ADAPTERS.validate(method, params, "adapter_params")
    if method in NOT_FROM_TEXT:
        raise RegistryError(f"adapter {method!r} cannot be trained from text alone: "
                            f"{NOT_FROM_TEXT[method]}")
    if method == "mor1e" and values.get("intuition_dim"):
        raise RegistryError("adapter 'mor1e': intuition_dim > 0 needs intuition vectors "
                            "(manytask.adapters.intuition), which the CLI does not compute; "
                            "use intuition_dim: 0 or the Python API")
    if not ADAPTERS.get(method).uses_layers and targets:
        raise RegistryError(f"adapter {method!r} prepends prompts and adapts no module: "
                            "leave adapter_targets unset")
    return values


def tokenise(split: TextSplit, tokenizer: Any, max_length: int, task: int) -> dict[str, Any]:
    """One split's inputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` (N, L) and
    ``task_ids`` (N, 1), the task's index in the model's task list."""
    pairs = bool(split.texts) and isinstance(split.texts[0], tuple)
    first = [t[0] for t in split.texts] if pairs else list(split.texts)
    second = [t[1] for t in split.texts] if pairs else None
    tok = tokenizer(first, second, padding="max_length", truncation=True,
                    max_length=max_length, return_tensors="pt")
    ids = tok["input_ids"]
    types = tok.get("token_type_ids")
    return {"input_ids": ids, "attention_mask": tok["attention_mask"],
            "token_type_ids": torch.zeros_like(ids) if types is None else types,
            "task_ids": torch.full((ids.shape[0], 1), task, dtype=torch.long)}


def prepare_adapter_text(
    text_tasks: Sequence[TextTask],
    method: str,
    params: Mapping[str, Any],
    targets: Sequence[str] | None,
    max_length: int,
    batch_size: int,
    tasks_per_batch: int,
    temperature: float,
    seed: int,
    *,
    load: Callable[[], tuple[Any, Any]] = load_minilm,
) -> AdapterData:
    """Tokenised batches of every split and a factory of fresh adapter models.

    ``model_factory()`` puts ``method`` with ``params`` on a copy of the frozen encoder
    (``targets``: the modules adapted, default ``query`` and ``value``; none for prompt
    methods), one linear head per task on the mean of the last hidden state. ``load``
    returns ``(model, tokenizer)`` (default: the bundled MiniLM, offline).
    """
    if not text_tasks:
        raise ValueError("prepare_adapter_text: no text tasks")
    values = check_adapter(method, params, targets)
    encoder, tokenizer = load()
    tasks = [t.task() for t in text_tasks]
    inputs = {s: {t.name: tokenise(t.split(s), tokenizer, max_length, k)
                  for k, t in enumerate(text_tasks)} for s in ("train", "val", "test")}
    labels = {s: {t.name: t.split(s).labels for t in text_tasks} for s in inputs}
    layered = ADAPTERS.get(method).uses_layers
    chosen = (list(targets) if targets else list(DEFAULT_TARGETS)) if layered else None

    def model_factory() -> AdapterModel:
        return AdapterModel(copy.deepcopy(encoder), tasks, method, target_modules=chosen,
                            **values)

    train = MixedTaskBatches(inputs["train"], labels["train"], batch_size,
                             tasks_per_batch=min(tasks_per_batch, len(tasks)),
                             temperature=temperature, seed=seed)
    return AdapterData(model_factory, train,
                       stacked_batches(inputs["val"], labels["val"], batch_size),
                       stacked_batches(inputs["test"], labels["test"], batch_size))
