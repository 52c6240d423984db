"""``tokenizer_source``: which tokenizer the merged model gets (mergekit's option).

``base`` (the base model's), ``union`` (of every input's, :mod:`~manytask.merging.vocab_union`)
or a model path. Vocabularies are read from each input folder's ``tokenizer.json``. When
every input has the output's vocabulary with as many embedding rows as tokens, the rows stay
as they are and the choice only decides which tokenizer files the output gets. Otherwise
every input's vocabulary rows are re-ordered to the output's tokens as mergekit does
(:mod:`~manytask.merging.vocabulary`), and the output's config records the new
``vocab_size`` (the number of tokens, as mergekit's ``_update_config_vocab``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import parse_json
from .config import MergeConfig
from .engine import VOCAB_NAMES
from .sources import Source
from .vocab_union import build_union, read_vocab
from .vocabulary import PermutedSource, VocabularyTable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json")


@dataclass(frozen=True)
class TokenizerPlan:
    """How the inputs are read (``wrap``), the output's ``vocab_size``, and ``write``, which
    puts the output's tokenizer files into a folder."""

    wrap: Callable[[Source], Source]
    vocab_size: int
    write: Callable[[Path], None]


def _chosen(cfg: MergeConfig, base: Source | None, models: list[Source]) -> Source:
    choice = cfg.tokenizer_source
    if choice == "base":
        if base is None:
            raise ValueError("tokenizer_source: base needs a base_model")
        return base
    if choice == "union":  # mergekit extends the base's, or the first model's, tokenizer
        return base if base is not None else models[0]
    found = next((s for s in [base, *models] if s is not None and s.folder() is not None
                  and os.path.realpath(s.folder() or "") == os.path.realpath(str(choice))),
                 None)
    if found is None:
        raise ValueError(f"tokenizer_source {choice!r} is not one of the input model folders")
    return found


def _rows(source: Source, names: set[str]) -> int | None:
    """Embedding rows of ``source`` (``None``: it has no vocabulary tensor)."""
    present = names.intersection(source.keys())
    sizes = {source.info(n).shape[0] for n in present}
    return min(sizes) if sizes else None


def tokenizer_plan(cfg: MergeConfig, base: Source | None,
                   models: list[Source]) -> TokenizerPlan | None:
    """The plan for ``cfg.tokenizer_source`` (``None`` when it is not given)."""
    if cfg.tokenizer_source is None:
        return None
    chosen = _chosen(cfg, base, models)
    inputs = [s for s in [base, *models] if s is not None]
    unique = list({id(s): s for s in inputs}.values())
    names = set(filter(VOCAB_NAMES.search, chosen.keys()))
    rows = [_rows(s, names) for s in unique]
    full = [read_vocab(s.folder(), s.label) for s in unique]
    vocabs = [v if r is None else v.below(r) for v, r in zip(full, rows, strict=True)]
    at = unique.index(chosen)
    folder = chosen.folder()
    assert folder is not None  # read_vocab found its tokenizer.json
    if cfg.tokenizer_source in ("base", "union") and vocabs[at].ids != full[at].ids:
        raise ValueError(
            f"tokenizer_source {cfg.tokenizer_source}: {chosen.label!r}'s tokenizer has "
            f"{len(full[at].ids) - len(vocabs[at].ids)} token(s) beyond its {rows[at]} "
            "embedding rows, which mergekit strips from the tokenizer; remove them first")
    want: dict[str, int]
    write: Callable[[Path], None]
    if cfg.tokenizer_source == "union":
        union = build_union(vocabs[at], [v for i, v in enumerate(vocabs) if i != at])
        want = union.ids
        write = ((lambda dest: union.write(folder, dest)) if union.appended
                 else (lambda dest: copy_tokenizer(folder, dest)))
    else:
        want = full[at].ids
        write = lambda dest: copy_tokenizer(folder, dest)  # noqa: E731
    if all(v.ids == want and r in (None, len(want)) for v, r in zip(vocabs, rows, strict=True)):
        return TokenizerPlan(lambda s: s, len(want), write)  # rows already in order
    table = VocabularyTable(want, [(s, v.ids) for s, v in zip(unique, vocabs, strict=True)],
                            None if base is None else unique.index(base), names)
    wrapped = {id(s): PermutedSource(s, i, table) for i, s in enumerate(unique)}
    return TokenizerPlan(lambda s: wrapped.get(id(s), s), len(want), write)


def copy_tokenizer(folder: Path, dest: Path) -> None:
    """Copy ``folder``'s tokenizer files over those already in ``dest``."""
    for name in TOKENIZER_FILES:
        src = folder / name
        if src.is_file() and not src.is_symlink():
            shutil.copy2(src, dest / name)


def set_vocab_size(config: Path, size: int) -> None:
    """Record the output's number of tokens as its config's ``vocab_size``."""
    if not config.is_file():
        return
    try:
        data = parse_json(config.read_text(), where=f"{str(config)!r}")
    except ValueError:
        return  # not JSON we understand: left as copied
    if isinstance(data, dict) and "vocab_size" in data:
        data["vocab_size"] = size
        config.write_text(json.dumps(data, indent=2))
