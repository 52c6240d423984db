"""Mean pooling, the sentence encoder on a tiny random BERT, and the embedding cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from manytask.data.encoders import EmbeddingCache, SentenceEncoder, mean_pool, texts_hash
from manytask.data.text import Text


def test_mean_pool_by_hand() -> None:
    hidden = torch.tensor([[[3.0, 4.0], [100.0, 100.0]], [[1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 0], [1, 1]])
    raw = mean_pool(hidden, mask, normalize=False)
    assert torch.allclose(raw, torch.tensor([[3.0, 4.0], [0.5, 0.5]]))  # padding ignored
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled, torch.tensor([[0.6, 0.8], [2**-0.5, 2**-0.5]]))
    empty = mean_pool(hidden, torch.zeros(2, 2, dtype=torch.long))
    assert torch.equal(empty, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask"):
        mean_pool(hidden, mask[:, :1])


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    transformers = pytest.importorskip("transformers")
    words = ["the", "a", "movie", "was", "good", "bad", "great", "plot", "what", "is", "who",
             "?", "."]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(path))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    return transformers.BertModel(config).eval(), tokenizer


SENTENCES = ["the movie was good .", "a bad plot", "what is the plot ?", "great",
             "who was the movie ?"]


@pytest.mark.slow  # building the tiny BERT imports transformers (seconds)
def test_encoder_matches_one_text_at_a_time(tiny_bert: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_bert
    batched = SentenceEncoder(model, tokenizer, max_length=16, batch_size=2).encode(SENTENCES)
    assert batched.shape == (5, 32)
    assert torch.allclose(batched.norm(dim=1), torch.ones(5), atol=1e-5)
    # by hand: each sentence alone (no padding at all), pooled over all its tokens
    for i, sentence in enumerate(SENTENCES):
        tokens = tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**tokens).last_hidden_state[0]
        expected = hidden.mean(0) / hidden.mean(0).norm()
        assert torch.allclose(batched[i], expected, atol=1e-5), sentence


@pytest.mark.slow
def test_encoder_pairs_and_truncation(tiny_bert: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_bert
    enc = SentenceEncoder(model, tokenizer, max_length=6, batch_size=4)
    pairs: list[Text] = [("the movie", "was good"), ("a plot", "what is who ?")]
    out = enc.encode(pairs)
    tokens = tokenizer("a plot", "what is who ?", truncation=True, max_length=6,
                       return_tensors="pt")
    assert tokens["input_ids"].shape[1] == 6
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state[0]
    assert torch.allclose(out[1], hidden.mean(0) / hidden.mean(0).norm(), atol=1e-5)
    with pytest.raises(TypeError, match="mixes"):
        enc.encode(["the movie", ("a", "b")])
    with pytest.raises(ValueError, match="max_length"):
        SentenceEncoder(model, tokenizer, max_length=0)


def test_texts_hash_sees_order_pairing_and_boundaries() -> None:
    base = texts_hash(["ab", "c"])
    assert base == texts_hash(["ab", "c"])
    assert base != texts_hash(["a", "bc"])
    assert base != texts_hash(["c", "ab"])
    assert texts_hash([("ab", "c")]) != texts_hash(["ab", "c"])


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, texts: Sequence[Text]) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[float(len(t)), 1.0] for t in texts])


def test_cache_hit_and_invalidation(tmp_path: Path) -> None:
    compute = Counting()
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.get("m", "sst2", "train", 64, ["good", "bad"], compute)
    again = EmbeddingCache(tmp_path / "cache").get("m", "sst2", "train", 64, ["good", "bad"],
                                                   compute)
    assert compute.calls == 1 and torch.equal(first, again)  # second call computed nothing
    cache.get("m", "sst2", "train", 64, ["good", "worse"], compute)  # sentences changed
    cache.get("m", "sst2", "train", 128, ["good", "bad"], compute)  # another max_length
    cache.get("m", "sst2", "val", 64, ["good", "bad"], compute)  # another split
    cache.get("m", "mr", "train", 64, ["good", "bad"], compute)  # another task
    cache.get("m2", "sst2", "train", 64, ["good", "bad"], compute)  # another model
    assert compute.calls == 6 and cache.computed == 6
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 6 and all(f.suffix == ".safetensors" for f in files)  # no temp left


def test_cache_rejects_bad_names_and_shapes(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match="task"):
        cache.get("m", "../x", "train", 64, ["a"], Counting())
    with pytest.raises(ValueError, match="shape"):
        cache.get("m", "t", "train", 64, ["a", "b"], lambda texts: torch.zeros(3, 2))
