"""Text columns through the bundled MiniLM (frozen, embeddings cached on disk).

One text column: its sentence embedding u. A pair of columns, by default, as two sentences
embedded separately and combined as [u, v, |u - v|, u * v] (Conneau et al., "Supervised
Learning of Universal Sentence Representations", EMNLP 2017, Section 3.2; the classifier
input Sentence-BERT also builds on); ``pair_encoding: joined`` embeds the pair as one
sequence instead. ``max_length`` defaults to the longest training text in tokens (at most
512); the fraction of texts it truncates is reported and a warning given above 1 %.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import torch
from torch import Tensor

from ..encoders import MINILM, EmbeddingCache, SentenceEncoder, load_minilm
from .columns import to_text
from .read import SplitRows

MAX_POSITIONS = 512
WARN_ABOVE = 0.01


@lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    """The frozen encoder, loaded once for every text column of a data set."""
    return load_minilm()


def texts_of(part: SplitRows, columns: Sequence[str]) -> list[list[str]]:
    """Each text column as a list of strings (a missing text is the empty string)."""
    return [pc.fill_null(to_text(part.table[c]), "").to_pylist() for c in columns]


class TextColumns:
    """Fits ``max_length`` on the training texts and embeds any split's text columns."""

    def __init__(self, columns: Sequence[str], pair_encoding: str, max_length: int | None,
                 cache_dir: str | Path) -> None:
        self.columns = tuple(columns)
        self.pair_encoding = pair_encoding
        self.max_length = max_length
        self.cache = EmbeddingCache(cache_dir)
        self._encoder: SentenceEncoder | None = None
        self._tokenizer: Any = None
        self.truncated: dict[str, float] = {}

    def state(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "pair_encoding": self.pair_encoding,
                "max_length": self.max_length, "truncated": self.truncated}

    @classmethod
    def from_state(cls, state: dict[str, Any], cache_dir: str | Path) -> TextColumns:
        return cls(state["columns"], state["pair_encoding"], state["max_length"], cache_dir)

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._model, self._tokenizer = _minilm()
        return self._tokenizer

    def _lengths(self, texts: list[list[str]]) -> list[int]:
        tok = self.tokenizer()
        if len(texts) == 2 and self.pair_encoding == "joined":
            ids = tok(texts[0], texts[1], truncation=False)["input_ids"]
            return [len(i) for i in ids]
        return [len(i) for col in texts for i in tok(col, truncation=False)["input_ids"]]

    def fit(self, train: Sequence[SplitRows]) -> None:
        """``max_length``, when not given: the longest training text (at most 512)."""
        if self.max_length is not None:
            return
        lengths = [n for part in train for n in self._lengths(texts_of(part, self.columns))]
        self.max_length = max(8, min(MAX_POSITIONS, max(lengths, default=8)))

    def report(self, split: str, part: SplitRows) -> float:
        """Fraction of the split's texts longer than ``max_length`` (printed; warned > 1 %)."""
        assert self.max_length is not None
        lengths = self._lengths(texts_of(part, self.columns))
        frac = sum(n > self.max_length for n in lengths) / max(len(lengths), 1)
        self.truncated[split] = frac
        print(f"text {split}: max_length {self.max_length}, {100 * frac:.1f} % of texts "
              "truncated", file=sys.stderr)
        if frac > WARN_ABOVE:
            warnings.warn(f"text columns {list(self.columns)}: max_length {self.max_length} "
                          f"truncates {100 * frac:.1f} % of the {split} texts", stacklevel=2)
        return frac

    def _encode(self, texts: Sequence[Any]) -> Tensor:
        if self._encoder is None:
            self.tokenizer()
            assert self.max_length is not None
            self._encoder = SentenceEncoder(self._model, self._tokenizer,
                                            max_length=self.max_length)
        return self._encoder.encode(texts)

    def _cached(self, key: str, split: str, texts: Sequence[Any]) -> Tensor:
        assert self.max_length is not None
        name = "decl-" + hashlib.sha1(key.encode()).hexdigest()[:12]
        return self.cache.get(MINILM, name, split, self.max_length, texts, self._encode)

    def embed(self, part: SplitRows, split: str) -> Tensor:
        """``(N, d)`` features of the split's texts (d = 384, or 4 x 384 for combined pairs)."""
        texts = texts_of(part, self.columns)
        if len(texts) == 1:
            return self._cached(self.columns[0], split, texts[0])
        if self.pair_encoding == "joined":
            pairs = list(zip(texts[0], texts[1], strict=True))
            return self._cached("|".join(self.columns), split, pairs)
        u = self._cached(self.columns[0], split, texts[0])
        v = self._cached(self.columns[1], split, texts[1])
        return torch.cat([u, v, (u - v).abs(), u * v], dim=1)
