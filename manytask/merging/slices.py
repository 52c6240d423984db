"""mergekit's ``slices``: an output model assembled from layer ranges of several models.

.. code-block:: yaml

    slices:                       # depth up-scaling: 2 + 2 layers from two 2-layer models
      - sources: [{model: a, layer_range: [0, 2]}]
      - sources: [{model: b, layer_range: [0, 2]}]
    merge_method: passthrough

Each slice lists sources with equally long layer ranges; its output layers are numbered on
from the previous slice's, and layer ``j`` of the slice merges layer ``start + j`` of each
source (a slice of several sources is an ordinary merge of those layers, e.g. SLERP with a
gradient over the slice's layers). Tensors outside the layers come, as in mergekit, from the
first slice's sources (embeddings) or the last slice's (final norm, output head). The
source whose model is the ``base_model`` is the slice's base.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..registry import did_you_mean
from .settings import LAYER, layer_of
from .sources import Source, TensorInfo

# Tensors read before the first block (their counterparts after it: everything else).
PRE = re.compile(r"(embed|wte|wpe|word_embeddings|tok_embeddings|shared\.weight)")


class RenamedSource(Source):
    """A view of ``source`` whose tensor ``out`` is the source's ``names[out]``."""

    def __init__(self, source: Source, names: Mapping[str, str]):
        self.source, self.names = source, dict(names)
        self.label = source.label
        self.fresh = source.fresh

    def keys(self) -> list[str]:
        return list(self.names)

    def info(self, name: str) -> TensorInfo:
        return self.source.info(self.names[name])

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        return self.source.read(self.names[name], start, stop)

    def folder(self) -> Any:
        return self.source.folder()


@dataclass
class SliceSource:
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class SliceDef:
    sources: list[SliceSource]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Group:
    """Tensors merged from the same inputs: ``names`` maps each output tensor to its layer
    position ``x`` (for gradients); ``models`` are parallel to ``sources``."""

    base: Source | None
    models: list[Source]
    sources: list[SliceSource]
    parameters: dict[str, Any]
    positions: dict[str, float]


SOURCE_KEYS = ("model", "layer_range", "parameters")


def _keys(value: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = [k for k in value if k not in allowed]
    if extra:
        hints = ", ".join(f"{k!r}{did_you_mean(str(k), allowed)}" for k in extra)
        raise ValueError(f"{where}: unknown key(s) {hints}; allowed: {list(allowed)}")


def parse_slices(value: Any) -> list[SliceDef]:
    """Validated ``slices`` of a configuration (one-line errors naming the entry)."""
    if not isinstance(value, list) or not value:
        raise ValueError("merge config: 'slices' must be a non-empty list")
    out = []
    for k, s in enumerate(value):
        where = f"slices[{k}]"
        if not isinstance(s, Mapping):
            raise TypeError(f"{where}: expected {{sources: [...], parameters: ...}}")
        _keys(s, ("sources", "parameters"), where)
        sources = s.get("sources")
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"{where}: 'sources' must be a non-empty list")
        entries = []
        for i, src in enumerate(sources):
            w = f"{where}.sources[{i}]"
            if not isinstance(src, Mapping):
                raise TypeError(f"{w}: expected {{model, layer_range, parameters}}")
            _keys(src, SOURCE_KEYS, w)
            model = src.get("model")
            if isinstance(model, Mapping):  # {model: {model: path}} as mergekit allows
                model = model.get("model")
            if not isinstance(model, str | os.PathLike):
                raise TypeError(f"{w}: model must be a path, got {model!r}")
            sp = src.get("parameters") or {}
            if not isinstance(sp, Mapping):
                raise TypeError(f"{w}: parameters must be a mapping, got {sp!r}")
            r = src.get("layer_range")
            if (not isinstance(r, list | tuple) or len(r) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                    or not 0 <= r[0] < r[1]):
                raise ValueError(f"{w}: layer_range must be [start, end) with 0 <= start < end, "
                                 f"got {r!r}")
            entries.append(SliceSource(os.fspath(model), (r[0], r[1]), dict(sp)))
        params = s.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise TypeError(f"{where}: parameters must be a mapping, got {params!r}")
        out.append(SliceDef(entries, dict(params)))
    return out


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def _renamed(name: str, offset: int) -> str:
    m = LAYER.search(name)
    assert m is not None
    index = int(m.group(3)) + offset
    return f"{name[: m.start(3)]}{index}{name[m.end(3):]}"


def _layer_names(src: Source, layer: int) -> list[str]:
    names = src.keys()
    return [n for n in names if layer_of(n) == layer]


def plan_groups(
    slices: list[SliceDef], opened: Mapping[str, Source], base_model: str | None
) -> list[Group]:
    """The groups of a sliced merge, in output order (pre tensors, slices, post tensors)."""
    groups: list[Group] = []
    out_layer = 0

    def split(slice_: SliceDef, where: str) -> tuple[Source | None, list[Source],
                                                      list[SliceSource]]:
        base_idx = [i for i, s in enumerate(slice_.sources) if _same(s.model, base_model)]
        models = [s for i, s in enumerate(slice_.sources) if i not in base_idx[:1]]
        if not models:
            raise ValueError(f"{where}: every source is the base_model; nothing to merge")
        base = opened[slice_.sources[base_idx[0]].model] if base_idx else None
        return base, [opened[s.model] for s in models], models

    for k, slice_ in enumerate(slices):
        where = f"slices[{k}]"
        lengths = {s.layer_range[1] - s.layer_range[0] for s in slice_.sources}
        if len(lengths) != 1:
            raise ValueError(f"{where}: sources cover different numbers of layers: "
                             f"{[list(s.layer_range) for s in slice_.sources]}")
        n = lengths.pop()
        base_src, model_srcs, model_defs = split(slice_, where)
        base_def = next((s for s in slice_.sources if _same(s.model, base_model)), None)
        names: dict[str, float] = {}
        maps: list[dict[str, str]] = [{} for _ in model_defs]
        base_map: dict[str, str] = {}
        for j in range(n):
            x = j / (n - 1) if n > 1 else 1.0
            first = model_defs[0]
            inputs = _layer_names(model_srcs[0], first.layer_range[0] + j)
            if not inputs:
                raise ValueError(f"{where}: model {first.model!r} has no layer "
                                 f"{first.layer_range[0] + j}")
            for name in inputs:
                out = _renamed(name, out_layer + j - (first.layer_range[0] + j))
                names[out] = x
                for i, (d, src) in enumerate(zip(model_defs, model_srcs, strict=True)):
                    maps[i][out] = _renamed(name, d.layer_range[0] - first.layer_range[0])
                    if maps[i][out] not in src:
                        raise ValueError(f"{where}: model {d.model!r} lacks tensor "
                                         f"{maps[i][out]!r}")
                if base_def is not None and base_src is not None:
                    base_map[out] = _renamed(name, base_def.layer_range[0] -
                                             first.layer_range[0])
        out_layer += n
        groups.append(Group(
            None if base_src is None else RenamedSource(base_src, base_map),
            [RenamedSource(s, m) for s, m in zip(model_srcs, maps, strict=True)],
            model_defs, slice_.parameters, names))
    # Tensors outside the blocks: embeddings from the first slice, the rest from the last.
    for index, pre in ((0, True), (len(slices) - 1, False)):
        base_src, model_srcs, model_defs = split(slices[index], f"slices[{index}]")
        keys = model_srcs[0].keys()
        outside = [n for n in keys
                   if layer_of(n) is None and bool(PRE.search(n)) == pre]
        if not outside:
            continue
        ident = {n: n for n in outside}
        group = Group(None if base_src is None else RenamedSource(base_src, ident),
                      [RenamedSource(s, ident) for s in model_srcs], model_defs,
                      slices[index].parameters, dict.fromkeys(outside, 0.0))
        if pre:
            groups.insert(0, group)
        else:
            groups.append(group)
    return groups
