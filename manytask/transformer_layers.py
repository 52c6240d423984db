"""Helpers over the layers of a BERT-style ``transformers`` encoder, used both by the data
side (running the frozen lower layers once, :mod:`manytask.data.hidden_states`) and by the
models (the trained top layers, :mod:`manytask.models.encoder_top`), so neither imports the
other."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def mean_pool(hidden: Tensor, mask: Tensor, normalize: bool = True) -> Tensor:
    """Mean of ``hidden`` (B, L, D) over the positions where ``mask`` (B, L) is 1, then L2
    normalised when ``normalize``. A row with no unmasked token pools to zeros."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"mean_pool: hidden must be (B, L, D) and mask (B, L), got "
                         f"{tuple(hidden.shape)} and {tuple(mask.shape)}")
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    # clamp: an all-padding row divides 0 by a tiny number instead of by 0
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def check_top_layers(n_layers: Any, total: int, owner: str) -> int:
    """``n_layers`` if it is an integer in ``[1, total]``, else a ``ValueError`` naming it."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ValueError(
            f"{owner}: n_layers (the top layers to fine-tune) must be an integer from 1 to "
            f"{total}, the encoder's number of layers; got {n_layers!r}"
        )
    return n_layers


def encoder_layers(model: Any, owner: str) -> nn.ModuleList:
    """The transformer layers of a BERT-style ``transformers`` model (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise TypeError(
            f"{owner}: expected a BERT-style transformers model with .embeddings and "
            f".encoder.layer, got {type(model).__name__}"
        )
    return layers


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 0/1 attention mask -> the (B, 1, 1, L) additive mask BERT layers take: 0 where a
    token may be attended to, the most negative finite number where not (its softmax weight
    underflows to exactly 0, so padding never changes the real tokens' states)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(layers: Iterable[nn.Module], hidden: Tensor, mask: Tensor) -> Tensor:
    """``hidden`` (B, L, H) through ``layers`` in turn, attending only where ``mask`` is 1."""
    ext = additive_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=ext)
        # transformers < 5 returns a tuple (hidden, attentions...), 5 the tensor itself
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden
