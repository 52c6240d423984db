"""Embedding rows re-ordered to the output tokenizer's vocabulary (``tokenizer_source``).

As mergekit 0.1.5 (``tokenizer/embed.py``): for every input ``s`` (the base included) and
every output token ``v``, the row of a vocabulary tensor is ``s``'s own row for ``v`` when
``s`` has the token; otherwise a default row that is the same for every input lacking it:

* the row of the one input that has ``v``, if exactly one has it;
* the base's row, if the base has it;
* the mean of the rows of the inputs that have it;
* zeros, if none has it.

The merge method then sees these re-ordered tensors. Reads stay per chunk of rows; an
input's rows for a chunk are read as one contiguous range (at most the whole tensor when
its vocabulary order is scrambled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .sources import Source, TensorInfo


class PermutedSource(Source):
    """``source`` with the rows of its vocabulary tensors in the output's token order."""

    def __init__(self, source: Source, index: int, table: VocabularyTable):
        self.source, self.index, self.table = source, index, table
        self.label = source.label
        self.fresh = True  # rows are gathered into new tensors

    def keys(self) -> list[str]:
        return self.source.keys()

    def info(self, name: str) -> TensorInfo:
        info = self.source.info(name)
        if name not in self.table.names:
            return info
        return TensorInfo((self.table.size, *info.shape[1:]), info.dtype)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> Tensor:
        if name not in self.table.names:
            return self.source.read(name, start, stop)
        rows = torch.arange(start or 0, self.table.size if stop is None else stop)
        return self.table.rows(name, self.index, rows)

    def folder(self) -> Path | None:
        return self.source.folder()


def _gather(source: Source, name: str, ids: Tensor) -> Tensor:
    lo, hi = int(ids.min()), int(ids.max()) + 1
    return source.read(name, lo, hi)[ids - lo].float()


class VocabularyTable:
    """Where each output token's row comes from, for every input (see the module doc)."""

    def __init__(self, vocab: Mapping[str, int], inputs: Sequence[tuple[Source, dict[str, int]]],
                 base: int | None, names: set[str]):
        self.names = names
        self.size = len(vocab)
        if sorted(vocab.values()) != list(range(self.size)):
            raise ValueError("tokenizer_source: the chosen vocabulary's ids are not 0..n-1")
        self.sources = [s for s, _ in inputs]
        tokens = sorted(vocab, key=vocab.__getitem__)
        # own[s][v]: row of output token v in input s, or -1
        self.own = torch.tensor([[v.get(t, -1) for t in tokens] for _, v in inputs])
        present = self.own >= 0
        count = present.sum(0)
        self.kind = torch.full((self.size,), 3)  # 0 one donor, 1 base, 2 mean, 3 zero
        self.kind[count == 1] = 0
        if base is not None:
            self.kind[(count > 1) & present[base]] = 1
        self.kind[(count > 1) & (self.kind == 3)] = 2
        self.kind[count == len(inputs)] = -1  # every input has it: no default needed
        self.base = base

    def default(self, name: str, ids: Tensor, like: Tensor) -> Tensor:
        """Default rows of output tokens ``ids`` (each lacking from some input)."""
        out = torch.zeros((len(ids), *like.shape[1:]), dtype=torch.float32)
        kind = self.kind[ids]
        present = self.own[:, ids] >= 0
        mean_sum = torch.zeros_like(out)
        for s, source in enumerate(self.sources):
            has = present[s]
            donor = has & (kind == 0)
            take = donor | (has & (kind == 1) & (s == self.base))
            if bool(take.any()):
                out[take] = _gather(source, name, self.own[s, ids[take]])
            avg = has & (kind == 2)
            if bool(avg.any()):
                mean_sum[avg] += _gather(source, name, self.own[s, ids[avg]])
        mean = kind == 2
        if bool(mean.any()):
            out[mean] = mean_sum[mean] / present[:, mean].sum(0).unsqueeze(-1).float()
        return out

    def rows(self, name: str, s: int, rows: Tensor) -> Tensor:
        source = self.sources[s]
        info = source.info(name)
        out = torch.empty((len(rows), *info.shape[1:]), dtype=torch.float32)
        own = self.own[s, rows]
        has = own >= 0
        if bool(has.any()):
            out[has] = _gather(source, name, own[has])
        if bool((~has).any()):
            out[~has] = self.default(name, rows[~has], out)
        return out.to(info.dtype)
