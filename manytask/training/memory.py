"""How much autograd holds saved for backward: the memory that accumulation with freed graphs
(``accumulate_memory="free"``) is there to save, measured rather than assumed.

    meter = SavedBytes(model.parameters())
    with meter.watching(model):
        trainer.train_step(batch)
    meter.peak, meter.graphs

Each storage counts once (a weight's transposed view saved by every micro-batch's graph is
the parameter itself, not counted), and is released when the last graph holding it is freed.
Each saved tensor is tagged with the model forward it follows, so ``graphs`` is the most
forwards whose saved tensors were alive at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _Holder:
    __slots__ = ("__weakref__", "t")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class SavedBytes:
    """Bytes autograd holds saved for backward, alive now (``live``) and at the peak
    (``peak``), leaving out the storages of ``params``; see the module."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.holders: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self.forward = -1
        self.per_forward: dict[int, int] = {}
        self.graphs = 0

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[SavedBytes]:
        """Count what is saved inside the block, each forward of ``model`` tagged apart."""
        handle = model.register_forward_pre_hook(self.forward_began)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield self
        finally:
            handle.remove()

    def forward_began(self, *_: object) -> None:
        self.forward += 1

    def pack(self, t: torch.Tensor) -> object:
        holder = _Holder(t.detach())  # not t: a saved output would hold its own graph
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in self.skip:
            return holder
        if self.holders.get(ptr, 0) == 0:
            self.live += size
            self.peak = max(self.peak, self.live)
        self.holders[ptr] = self.holders.get(ptr, 0) + 1
        self.per_forward[self.forward] = self.per_forward.get(self.forward, 0) + 1
        self.graphs = max(self.graphs, sum(1 for n in self.per_forward.values() if n))
        weakref.finalize(holder, self.release, ptr, size, self.forward)
        return holder

    def release(self, ptr: int, size: int, forward: int) -> None:
        self.per_forward[forward] -= 1
        self.holders[ptr] -= 1
        if self.holders[ptr] == 0:
            self.live -= size

    @staticmethod
    def unpack(holder: object) -> torch.Tensor:
        t: torch.Tensor = holder.t  # type: ignore[attr-defined]
        return t
