"""``tokenizer_source``: which tokenizer the merged model gets (mergekit's option).

``base`` (the base model's), ``union`` (of every input's) or a model path. The vocabulary is
read from each input folder's ``tokenizer.json`` (``model.vocab`` and ``added_tokens``),
without loading any tokenizer library. When every input has the same vocabulary, each choice
keeps the embedding rows as they are and only decides whose tokenizer files are copied,
which is mergekit's result too. Inputs whose vocabularies differ need mergekit's permutation
of embedding rows, which manytask does not do: such a merge is refused, naming the model
that differs, before anything is read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import MergeConfig
from .sources import Source

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
        data: Any = json.loads(path.read_text())
        vocab = dict(data.get("model", {}).get("vocab") or {})
        if isinstance(data.get("model", {}).get("vocab"), list):  # unigram: [token, score]
            vocab = {t[0]: i for i, t in enumerate(data["model"]["vocab"])}
        for tok in data.get("added_tokens") or []:
            vocab[tok["content"]] = int(tok["id"])
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"tokenizer_source: cannot read the vocabulary of {str(path)!r}: "
                         f"{err}") from None
    return vocab


def tokenizer_files(cfg: MergeConfig, base: Source | None,
                    models: Sequence[Source]) -> Path | None:
    """The folder whose tokenizer files the output gets (``None``: the base's as usual)."""
    choice = cfg.tokenizer_source
    chosen: Source | None
    if choice is None:
        return None
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
    want = vocabulary(chosen.folder(), chosen.label)
    for s in [base, *models]:
        if s is not None and s is not chosen and vocabulary(s.folder(), s.label) != want:
            raise ValueError(
                f"tokenizer_source {choice!r}: {s.label!r} has a different vocabulary from "
                f"{chosen.label!r}; permuting embedding rows between vocabularies is not "
                "supported (use embed_mismatch: base to keep the reference's rows)")
    return chosen.folder()


def copy_tokenizer(folder: Path, dest: Path) -> None:
    """Copy ``folder``'s tokenizer files over those already in ``dest``."""
    for name in TOKENIZER_FILES:
        src = folder / name
        if src.is_file() and not src.is_symlink():
            shutil.copy2(src, dest / name)
