"""``tokenizer_source``: which tokenizer the merged model gets (mergekit's option).

``base`` (the base model's), ``union`` (of every input's) or a model path. The vocabulary is
read from each input folder's ``tokenizer.json`` (``model.vocab`` and ``added_tokens``),
without loading any tokenizer library. When every input has the same vocabulary, each choice
keeps the embedding rows as they are and only decides whose tokenizer files are copied,
which is mergekit's result too. When vocabularies differ, ``base`` or a model's tokenizer
re-orders every input's vocabulary rows to it as mergekit does
(:mod:`~manytask.merging.vocabulary`); ``union`` would need mergekit's tokenizer builder
and is refused then, naming the model that differs, before anything is read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import parse_json
from .config import MergeConfig
from .engine import VOCAB_NAMES
from .sources import Source
from .vocabulary import PermutedSource, VocabularyTable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json")
MAX_TOKENIZER_BYTES = 1 << 30


def vocabulary(folder: Path | None, label: str) -> dict[str, int]:
    """Token -> id of the ``tokenizer.json`` in ``folder``, or a one-line ``ValueError``."""
    path = None if folder is None else folder / "tokenizer.json"
    if path is None or not path.is_file():
        raise ValueError(f"tokenizer_source: {label!r} has no tokenizer.json to read its "
                         "vocabulary from")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"tokenizer_source: {str(path)!r} is larger than 1 GiB")
    try:
        data: Any = parse_json(path.read_text(), where=f"tokenizer {str(path)!r}")
        vocab = dict(data.get("model", {}).get("vocab") or {})
        if isinstance(data.get("model", {}).get("vocab"), list):  # unigram: [token, score]
            vocab = {t[0]: i for i, t in enumerate(data["model"]["vocab"])}
        for tok in data.get("added_tokens") or []:
            vocab[tok["content"]] = int(tok["id"])
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"tokenizer_source: cannot read the vocabulary of {str(path)!r}: "
                         f"{err}") from None
    return vocab


def tokenizer_files(
    cfg: MergeConfig, base: Source | None, models: Sequence[Source]
) -> tuple[Path | None, Callable[[Source], Source]]:
    """The folder whose tokenizer files the output gets (``None``: the base's as usual), and
    how to wrap each input so that its vocabulary rows follow that tokenizer."""
    choice = cfg.tokenizer_source
    chosen: Source | None
    if choice is None:
        return None, lambda s: s
    if choice == "base":
        if base is None:
            raise ValueError("tokenizer_source: base needs a base_model")
        chosen = base
    elif choice == "union":
        chosen = base if base is not None else models[0]
    else:
        chosen = next((s for s in [base, *models] if s is not None and s.folder() is not None
                       and os.path.realpath(s.folder() or "") == os.path.realpath(choice)),
                      None)
        if chosen is None:
            raise ValueError(f"tokenizer_source {choice!r} is not one of the input model "
                             "folders")
    assert chosen is not None
    inputs = [s for s in [base, *models] if s is not None]
    unique = list({id(s): s for s in inputs}.values())
    vocabs = [vocabulary(s.folder(), s.label) for s in unique]
    want = vocabs[unique.index(chosen)]
    if all(v == want for v in vocabs):
        return chosen.folder(), lambda s: s  # rows already in the tokenizer's order
    if choice == "union":
        differs = unique[next(i for i, v in enumerate(vocabs) if v != want)]
        raise ValueError(
            f"tokenizer_source union: {differs.label!r} has a different vocabulary from "
            f"{chosen.label!r}; building a union tokenizer is not supported (choose base "
            "or one model's tokenizer, whose rows are then re-ordered as mergekit does)")
    keys = chosen.keys()
    names = {n for n in keys if VOCAB_NAMES.search(n)}
    table = VocabularyTable(want, list(zip(unique, vocabs, strict=True)),
                            None if base is None else unique.index(base), names)
    wrapped = {id(s): PermutedSource(s, i, table) for i, s in enumerate(unique)}
    return chosen.folder(), lambda s: wrapped.get(id(s), s)


def copy_tokenizer(folder: Path, dest: Path) -> None:
    """Copy ``folder``'s tokenizer files over those already in ``dest``."""
    for name in TOKENIZER_FILES:
        src = folder / name
        if src.is_file() and not src.is_symlink():
            shutil.copy2(src, dest / name)
