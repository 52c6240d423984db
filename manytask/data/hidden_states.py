"""Cached lower-layer states of a sentence encoder, for fine-tuning its top layers.

The frozen path (:mod:`manytask.data.encoders`) caches one sentence embedding per text. To
fine-tune the top ``n`` transformer layers (Sun, Qiu, Xu and Huang, "How to Fine-Tune BERT for
Text Classification?", CCL 2019, Section 5.3), the layers below never change, so their output
is computed once per sentence and cached:

* :class:`LowerEncoder` runs the embeddings and the lower ``L - n`` layers of a BERT-style
  ``transformers`` model and returns the token-level hidden states of the real (unpadded)
  tokens, ragged: ``tokens`` (T, H) and ``lengths`` (N,), so padding takes no disk space.
* :class:`HiddenStateCache` keeps them on disk in float16 (half the bytes of float32), one
  safetensors file per (model, lower layer count, dtype, task, split, max_length, texts hash);
  the file names add ``-lower<k>-<dtype>`` to the model name, so they never collide with the
  frozen sentence embeddings of :class:`~manytask.data.encoders.EmbeddingCache`.

The model side is :mod:`manytask.models.encoder_top`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..transformer_layers import encoder_layers, run_layers
from .encoders import MINILM, EmbeddingCache, SentenceEncoder, length_order, save_atomic
from .text import Text

SPLITS = ("train", "val", "test")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unpack(tokens: Tensor, lengths: Tensor, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Ragged ``tokens`` (T, H) of sentences of ``lengths`` (N,) -> right-padded ``hidden``
    (N, length, H) (zeros on padding) and boolean ``mask`` (N, length)."""
    if tokens.dim() != 2 or lengths.dim() != 1 or int(lengths.sum()) != tokens.shape[0]:
        raise ValueError(
            f"unpack: tokens {tuple(tokens.shape)} do not hold sum(lengths) = "
            f"{int(lengths.sum())} rows for {lengths.shape[0]} sentences"
        )
    longest = int(lengths.max()) if lengths.numel() else 0
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"unpack: length {length} is shorter than the longest sentence {longest}")
    mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    hidden = tokens.new_zeros(lengths.shape[0], length, tokens.shape[1])
    hidden[mask] = tokens  # row-major: each sentence's tokens in order, as packed
    return hidden, mask


class LowerEncoder:
    """The frozen lower part of a BERT-style encoder: embeddings and the first ``n_lower``
    layers, run once per sentence under ``torch.no_grad``.

    Args:
        model: a ``transformers`` BERT-style model (``.embeddings``, ``.encoder.layer``).
        tokenizer: its tokenizer (right padding).
        n_lower: layers to run after the embeddings (0: the embeddings alone).
        max_length: tokens per text after truncation (pairs: both sentences together).
        batch_size: texts per forward pass (sorted by length, so batches pad little).
        dtype: dtype of the returned (and cached) hidden states.
        name: the model's name in cache keys.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        n_lower: int,
        *,
        max_length: int = 64,
        batch_size: int = 64,
        dtype: torch.dtype = torch.float16,
        name: str = MINILM,
    ) -> None:
        layers = encoder_layers(model, "LowerEncoder")
        if (
            isinstance(n_lower, bool)
            or not isinstance(n_lower, int)
            or not 0 <= n_lower < len(layers)
        ):
            raise ValueError(
                f"LowerEncoder: n_lower must be an integer from 0 to {len(layers) - 1} (at least "
                f"one of the {len(layers)} layers stays on top), got {n_lower!r}"
            )
        if not dtype.is_floating_point:
            raise TypeError(f"LowerEncoder: dtype must be a floating dtype, got {dtype}")
        # the SentenceEncoder validates max_length, batch_size and the texts, and tokenizes
        self.sentences = SentenceEncoder(
            model, tokenizer, max_length=max_length, batch_size=batch_size, name=name
        )
        self.model = model
        self.n_lower = n_lower
        self.dtype = dtype

    @property
    def max_length(self) -> int:
        return self.sentences.max_length

    @property
    def key(self) -> str:
        """The cache's model key: the name, the layers run and the stored dtype."""
        return f"{self.sentences.name}-lower{self.n_lower}-{_dtype_name(self.dtype)}"

    def hidden(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Hidden states (B, L, H) after the lower layers for one tokenized batch."""
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        types = tokens.get("token_type_ids")
        embedded = self.model.embeddings(
            input_ids=ids, token_type_ids=torch.zeros_like(ids) if types is None else types
        )
        return run_layers(
            encoder_layers(self.model, "LowerEncoder")[: self.n_lower], embedded, mask
        )

    @torch.no_grad()
    def encode(self, texts: Sequence[Text]) -> dict[str, Tensor]:
        """``{"tokens": (T, H), "lengths": (N,)}``: the real tokens' hidden states of every
        text, in the order of ``texts``, concatenated (``T = lengths.sum()``)."""
        if len(texts) == 0:
            raise ValueError("LowerEncoder.encode: no texts")
        self.model.eval()
        order = length_order(texts)
        ordered = [texts[i] for i in order.tolist()]
        parts, part_lengths = [], []
        for start in range(0, len(ordered), self.sentences.batch_size):
            tokens = self.sentences.tokenize(ordered[start : start + self.sentences.batch_size])
            mask = tokens["attention_mask"].bool()
            lengths = mask.sum(1)
            if not torch.equal(mask, torch.arange(mask.shape[1])[None, :] < lengths[:, None]):
                raise ValueError("LowerEncoder: the tokenizer must pad on the right")
            parts.append(self.hidden(tokens)[mask].to(self.dtype))
            part_lengths.append(lengths)
        sorted_tokens, sorted_lengths = torch.cat(parts), torch.cat(part_lengths)
        # back to the order of `texts`: gather each sentence's run of rows
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0])
        lengths = sorted_lengths[inverse]
        sorted_starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        starts = torch.cumsum(lengths, 0) - lengths
        offset = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
        rows = torch.repeat_interleave(sorted_starts[inverse], lengths) + offset
        return {"tokens": sorted_tokens[rows], "lengths": lengths}


class HiddenStateCache:
    """:class:`LowerEncoder` outputs on disk, one safetensors file per (encoder key, task,
    split, max_length, texts), named as :class:`~manytask.data.encoders.EmbeddingCache` names
    its files. ``computed`` counts the splits this object had to encode."""

    def __init__(self, directory: str | Path) -> None:
        self.keys = EmbeddingCache(directory)
        self.computed = 0

    @property
    def directory(self) -> Path:
        return self.keys.directory

    def path(self, encoder: LowerEncoder, task: str, split: str, texts: Sequence[Text]) -> Path:
        return self.keys.path(encoder.key, task, split, encoder.max_length, texts)

    def get(
        self, encoder: LowerEncoder, task: str, split: str, texts: Sequence[Text]
    ) -> dict[str, Tensor]:
        """The stored ``{"tokens", "lengths"}`` of ``texts`` or, if absent, encoded and stored."""
        from safetensors.torch import load_file

        path = self.path(encoder, task, split, texts)
        if path.exists():
            stored = load_file(str(path))
            tokens, lengths = stored.get("tokens"), stored.get("lengths")
            # a file that does not fit (another writer's format, a truncated copy) is redone
            if (
                tokens is not None
                and lengths is not None
                and lengths.shape == (len(texts),)
                and int(lengths.sum()) == tokens.shape[0]
            ):
                return {"tokens": tokens, "lengths": lengths}
        values = encoder.encode(texts)
        self.computed += 1
        meta = {
            "model": encoder.sentences.name,
            "lower_layers": str(encoder.n_lower),
            "task": task,
            "split": split,
            "max_length": str(encoder.max_length),
        }
        save_atomic(values, path, meta)
        return values
