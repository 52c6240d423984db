"""mergekit's union tokenizer, built by hand on small vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

from manytask.merging.vocab_union import TokenizerVocab, build_union, read_vocab


def _added(content: str, token_id: int, **flags: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True, **flags}


def _vocab(regular: list[str], added: list[dict]) -> TokenizerVocab:
    data = {"model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(regular)}},
            "added_tokens": added}
    ids = {**data["model"]["vocab"], **{a["content"]: a["id"] for a in added}}
    return TokenizerVocab(ids, added, data)


def test_union_appends_plain_then_added_tokens_in_input_order() -> None:
    base = _vocab(["a", "b"], [_added("<s>", 2)])
    m0 = _vocab(["c", "b", "e"], [_added("<s>", 3), _added("<p>", 4, lstrip=True)])
    m1 = _vocab(["d", "c", "e"], [_added("<p>", 3), _added("<q>", 4)])
    union = build_union(base, [m0, m1.below(4)])  # m1 has 4 rows: <q> is dropped
    assert union.ids == {"a": 0, "b": 1, "<s>": 2, "c": 3, "e": 4, "d": 5, "<p>": 6}
    plain = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": True,
             "special": False}
    assert union.appended == [{"id": 3, "content": "c", **plain},
                              {"id": 4, "content": "e", **plain},
                              {"id": 5, "content": "d", **plain},
                              _added("<p>", 6, lstrip=True)]  # first declaration wins


def test_a_plain_base_token_declared_added_elsewhere_keeps_its_id() -> None:
    base = _vocab(["a", "<p>"], [])
    union = build_union(base, [_vocab(["x"], [_added("<p>", 1)])])
    assert union.ids == {"a": 0, "<p>": 1, "x": 2}
    assert union.appended[-1] == _added("<p>", 1)


def test_write_extends_the_base_files(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir(), dest.mkdir()
    base = _vocab(["a"], [_added("<s>", 1)])
    (src / "tokenizer.json").write_text(json.dumps(base.data))
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"1": {"content": "<s>", "special": True}}, "x": 1}))
    (src / "special_tokens_map.json").write_text('{"bos_token": "<s>"}')
    (src / "vocab.txt").write_text("a\n<s>\n")  # a slow file would lack the new tokens
    union = build_union(read_vocab(src, "base"), [_vocab(["b"], [])])
    union.write(src, dest)
    assert read_vocab(dest, "out").ids == {"a": 0, "<s>": 1, "b": 2}
    config = json.loads((dest / "tokenizer_config.json").read_text())
    assert config["x"] == 1 and config["added_tokens_decoder"]["2"]["content"] == "b"
    assert (dest / "special_tokens_map.json").read_text() == '{"bos_token": "<s>"}'
    assert not (dest / "vocab.txt").exists()
