"""Reading a configuration "like mergekit", and saying where the two conventions differ.

Sparse and rescaling methods default to their papers' definitions; mergekit 0.1.5 defines
some parameters differently (see :mod:`~manytask.merging.methods.sparse`). A configuration
that does not choose (no ``convention`` key, no ``--like``) is merged with the papers'
meaning, and :func:`convention_notes` names each parameter whose meaning differs there, one
line each, with what to write to get mergekit's result instead. Nothing is silently
different.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .config import MergeConfig
from .methods import get_method

HINT = "add 'convention: mergekit' (or run with --like mergekit) for mergekit's"
_SIGN = ("ties", "dare_ties", "della", "breadcrumbs_ties")
_RANDOM = ("dare_linear", "dare_ties", "della_linear", "della")


def load_config(
    config: MergeConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    like: str | None = None,
    random_seed: int | None = None,
) -> MergeConfig:
    """A validated :class:`MergeConfig`; ``like``/``random_seed`` (command-line options)
    take precedence over the file's ``convention``/``random_seed``."""
    if like is None and random_seed is None and isinstance(config, MergeConfig):
        return config
    if isinstance(config, MergeConfig):
        data: dict[str, Any] = {"config": config}
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raw = MergeConfig.read_yaml(config)
        if not isinstance(raw, Mapping):
            return MergeConfig.from_dict(raw)  # refuses it, naming the type
        data = dict(raw)
    if like is not None and like not in ("mergekit", "paper"):
        raise ValueError(f"--like must be 'mergekit' or 'paper', got {like!r}")
    if "config" in data:  # a MergeConfig given with overrides: a validated copy
        cfg = data["config"]
        changes: dict[str, Any] = {}
        if like is not None:
            changes["convention"] = like
        if random_seed is not None:
            changes["random_seed"] = random_seed
        return dataclasses.replace(cfg, **changes)
    if like is not None:
        data["convention"] = like
    if random_seed is not None:
        data["random_seed"] = random_seed
    return MergeConfig.from_dict(data)


def _given(cfg: MergeConfig, key: str) -> bool:
    scopes = [cfg.parameters, *[m.parameters for m in cfg.models]]
    scopes += [s.parameters for s in cfg.slices or []]
    scopes += [x.parameters for s in cfg.slices or [] for x in s.sources]
    return any(key in scope for scope in scopes)


def convention_notes(cfg: MergeConfig) -> list[str]:
    """One line per parameter whose meaning differs between the conventions in ``cfg``;
    empty when ``cfg`` chose a convention (top level or the method's parameter) or when
    nothing differs."""
    name = cfg.merge_method
    if "convention" not in get_method(name).global_params:
        return []
    if cfg.convention is not None or "convention" in cfg.parameters:
        return []
    notes = []
    weights = {repr(m.parameters.get("weight", cfg.parameters.get("weight", 1.0)))
               for m in cfg.models}
    if name in _SIGN and len(weights) > 1:
        notes.append(f"{name}: the sign is elected on the unweighted task vectors (the "
                     f"paper; weights apply after); mergekit elects on the weighted ones: "
                     f"{HINT}")
    if name == "ties" and not _given(cfg, "density"):
        notes.append(f"{name}: density defaults to the paper's 0.2 (top 20 % kept); "
                     f"mergekit's default 1.0 keeps everything: {HINT}, or set density")
    if name in _RANDOM and not _given(cfg, "rescale"):
        notes.append(f"{name}: rescale divides each kept entry by its keep probability (the "
                     f"paper); mergekit rescales the pruned vector to its original L1 norm: "
                     f"{HINT}")
    if name in ("dare_ties", "breadcrumbs_ties") and not _given(cfg, "normalize"):
        notes.append(f"{name}: normalize defaults to true (the disjoint mean of the paper's "
                     f"sign election); mergekit sums without normalising: {HINT}")
    return notes
