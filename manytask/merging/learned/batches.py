"""Batches for the learned merges: one per task and step, cycling through short loaders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor


class BatchCycle:
    """Endless batches from a loader (restarted when exhausted), counting them.

    Every learned merge reads one batch per task and step; a loader shorter than the number of
    steps is cycled, and the count is reported so a user sees how often data was reused.
    """

    def __init__(self, loader: Iterable[Any], name: str, where: str = "merge"):
        self.loader, self.name, self.where, self.count = loader, name, where, 0
        self._it: Iterator[Any] = iter(loader)

    def next_batch(self) -> Any:
        """The next batch as the loader yields it."""
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError(f"{self.where}: loader {self.name} yields no batch") from None
        self.count += 1
        return batch

    def next_input(self) -> Tensor:
        """The next batch's input: the batch itself, or its first item for tuples."""
        batch = self.next_batch()
        return batch[0] if isinstance(batch, list | tuple) else batch
