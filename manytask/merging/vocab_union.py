"""Reading a ``tokenizer.json``'s vocabulary and building mergekit's union tokenizer.

A vocabulary is read from ``tokenizer.json`` alone (``model.vocab`` and ``added_tokens``),
without a tokenizer library. The union follows mergekit 0.1.5's ``build_union_tokenizer``
(``tokenizer/build.py``):

1. every input's tokens, the base (or first model) first, are gathered in order, skipping
   any token whose id is not below that input's number of embedding rows;
2. the output tokenizer is the base's, and each gathered token it lacks is appended as a
   plain added token (``normalized: true, special: false``) with the next free id,
   except tokens some input declares as added tokens;
3. then every input's added tokens (first declaration wins) that the output lacks are
   appended with their own settings (``special``, ``normalized``, ``lstrip``, ...).

mergekit walks each vocabulary in the order of a Rust hash map, so the ids it gives the
appended tokens change from run to run; here they follow the inputs' order and then the
ids inside each input, so the result is reproducible. Which tokens the output has, the ids
of the base's tokens, the added tokens' settings and every token's embedding row are
mergekit's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import parse_json

MAX_TOKENIZER_BYTES = 1 << 30
ADDED_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


@dataclass(frozen=True)
class TokenizerVocab:
    """One input's vocabulary: ``ids`` (token -> id, added tokens included), the added
    tokens' ``tokenizer.json`` entries, and the parsed file itself."""

    ids: dict[str, int]
    added: list[dict[str, Any]]
    data: dict[str, Any] = field(repr=False)

    def below(self, rows: int) -> TokenizerVocab:
        """Only the tokens an embedding of ``rows`` rows has (mergekit skips the others)."""
        return TokenizerVocab({t: i for t, i in self.ids.items() if i < rows},
                              [a for a in self.added if int(a["id"]) < rows], self.data)


def read_vocab(folder: Path | None, label: str) -> TokenizerVocab:
    """The vocabulary of ``folder/tokenizer.json``, or a one-line ``ValueError``."""
    path = None if folder is None else folder / "tokenizer.json"
    if path is None or not path.is_file():
        raise ValueError(f"tokenizer_source: {label!r} has no tokenizer.json to read its "
                         "vocabulary from")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"tokenizer_source: {str(path)!r} is larger than 1 GiB")
    try:
        data: Any = parse_json(path.read_text(), where=f"tokenizer {str(path)!r}")
        model = data.get("model", {})
        raw = model.get("vocab") or {}
        if isinstance(raw, list):  # unigram: [token, score] in id order
            ids = {t[0]: i for i, t in enumerate(raw)}
        else:
            ids = {str(t): int(i) for t, i in dict(raw).items()}
        added = [dict(a) for a in data.get("added_tokens") or []]
        for tok in added:
            ids[str(tok["content"])] = int(tok["id"])
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"tokenizer_source: cannot read the vocabulary of {str(path)!r}: "
                         f"{err}") from None
    return TokenizerVocab(ids, added, data)


def _plain(content: str, token_id: int) -> dict[str, Any]:
    """The entry ``tokenizer.add_tokens(content)`` writes for a plain string."""
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": True, "special": False}


@dataclass(frozen=True)
class UnionTokenizer:
    """The union's vocabulary (token -> id) and the entries appended to the base's file."""

    ids: dict[str, int]
    appended: list[dict[str, Any]]
    base: TokenizerVocab

    def write(self, source: Path, dest: Path) -> None:
        """Write the union's ``tokenizer.json`` (the base's with the appended tokens), and
        the base's ``tokenizer_config.json`` (its ``added_tokens_decoder`` extended) and
        ``special_tokens_map.json``; the base's slow-tokenizer files would lack the
        appended tokens and are not copied."""
        data = dict(self.base.data)
        data["added_tokens"] = [*(self.base.data.get("added_tokens") or []), *self.appended]
        (dest / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
        special = source / "special_tokens_map.json"
        if special.is_file() and not special.is_symlink():
            (dest / special.name).write_bytes(special.read_bytes())
        config = source / "tokenizer_config.json"
        if not config.is_file() or config.is_symlink():
            return
        try:
            settings: Any = parse_json(config.read_text(), where=f"{str(config)!r}")
        except ValueError as err:
            raise ValueError(f"tokenizer_source union: cannot read {str(config)!r}: "
                             f"{err}") from None
        decoder = settings.get("added_tokens_decoder") if isinstance(settings, dict) else None
        if isinstance(decoder, dict):
            for entry in self.appended:
                decoder[str(entry["id"])] = {"content": entry["content"],
                                             **{k: entry[k] for k in ADDED_FLAGS}}
        (dest / config.name).write_text(json.dumps(settings, indent=2, ensure_ascii=False))


def build_union(base: TokenizerVocab, others: Sequence[TokenizerVocab]) -> UnionTokenizer:
    """mergekit's union of ``base`` (whose tokenizer the output extends) and ``others``
    (each already cut to its embedding rows with :meth:`TokenizerVocab.below`)."""
    inputs = [base, *others]
    gathered: dict[str, None] = {}  # an ordered set
    declared: dict[str, dict[str, Any]] = {}  # content -> first added-token entry
    for vocab in inputs:
        for token in sorted(vocab.ids, key=vocab.ids.__getitem__):
            gathered.setdefault(token)
        for entry in sorted(vocab.added, key=lambda a: int(a["id"])):
            declared.setdefault(str(entry["content"]), entry)
    ids = dict(base.ids)
    if sorted(ids.values()) != list(range(len(ids))):
        raise ValueError("tokenizer_source union: the base tokenizer's ids are not 0..n-1 "
                         "within its embedding rows")
    base_added = {str(a["content"]) for a in base.added}
    appended: list[dict[str, Any]] = []
    for token in gathered:
        if token not in ids and token not in declared:
            ids[token] = len(ids)
            appended.append(_plain(token, ids[token]))
    for content, entry in declared.items():
        if content in base_added:
            continue  # already an added token of the output
        new = content not in ids
        if new:
            ids[content] = len(ids)
        appended.append({"id": ids[content], "content": content,
                         **{k: bool(entry.get(k, False)) for k in ADDED_FLAGS}})
    return UnionTokenizer(ids, appended, base)
