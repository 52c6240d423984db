"""Tabular multi-task data: tensors sliced per batch, and an embedding + dense input layer.

A data set is three things held as whole tensors: categorical codes ``(N, C)`` (int64), dense
features ``(N, D)`` (float32) and targets ``{task: (N, ...)}``. An epoch permutes them once
(one gather per tensor) and then yields contiguous slices, so the hot path has no per-sample
Python object at all. Inputs travel as :class:`~manytask.tabular_types.TabularX`, a named pair
of tensors that every model with a :class:`~manytask.models.inputs.TabularInput` layer accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..tabular_types import INT_DTYPES, TabularX, check_codes

__all__ = ["TabularBatch", "TabularDataset", "TabularX", "check_codes"]

@dataclass
class TabularBatch:
    """One batch: the inputs and ``{task: target}``."""

    x: TabularX
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.x.dense.shape[0])


class TabularDataset:
    """Categorical codes, dense features and per-task targets of ``N`` rows, as tensors.

    Args:
        categorical: ``(N, C)`` integer codes (``C`` may be 0), or ``None`` for none.
        dense: ``(N, D)`` floating features (``D`` may be 0), or ``None`` for none.
        targets: ``{task: tensor}`` with ``N`` rows each.
        cardinalities: number of codes of each categorical column; when given, every code must
            lie in ``[0, cardinality)``.
    """

    def __init__(
        self,
        categorical: Tensor | None,
        dense: Tensor | None,
        targets: Mapping[str, Tensor],
        cardinalities: Sequence[int] | None = None,
    ) -> None:
        n = _rows(categorical, dense, targets)
        if categorical is None:
            categorical = torch.zeros(n, 0, dtype=torch.long)
        if dense is None:
            dense = torch.zeros(n, 0)
        if categorical.dim() != 2 or categorical.dtype not in INT_DTYPES:
            raise TypeError(
                f"TabularDataset: categorical must be a 2-D integer tensor, got "
                f"{categorical.dtype} of shape {tuple(categorical.shape)}"
            )
        if dense.dim() != 2 or not dense.is_floating_point():
            raise TypeError(
                f"TabularDataset: dense must be a 2-D floating tensor, got "
                f"{dense.dtype} of shape {tuple(dense.shape)}"
            )
        for name, tensor in [("categorical", categorical), ("dense", dense), *targets.items()]:
            if tensor.shape[0] != n:
                raise ValueError(
                    f"TabularDataset: {name!r} has {tensor.shape[0]} rows, expected {n}"
                )
        self.categorical = categorical.long()
        self.dense = dense.float()
        self.targets = dict(targets)
        self.cardinalities = None if cardinalities is None else tuple(int(c) for c in cardinalities)
        if self.cardinalities is not None:
            check_codes(self.categorical, self.cardinalities, "TabularDataset")

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    @property
    def x(self) -> TabularX:
        """All rows as one input."""
        return TabularX(self.categorical, self.dense)

    def subset(self, index: Tensor) -> TabularDataset:
        """The rows ``index`` (a 1-D long tensor), as a new data set."""
        return TabularDataset(
            self.categorical.index_select(0, index),
            self.dense.index_select(0, index),
            {t: y.index_select(0, index) for t, y in self.targets.items()},
            self.cardinalities,
        )

    def split(self, fractions: Sequence[float], seed: int = 0) -> list[TabularDataset]:
        """Split the rows at random (fixed ``seed``) into parts of the given ``fractions``.

        The fractions must be positive and sum to 1; the last part takes the rounding remainder.
        """
        if not fractions or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split: fractions must be positive and sum to 1, got {list(fractions)}"
            )
        n = len(self)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        sizes = [int(f * n) for f in fractions[:-1]]
        sizes.append(n - sum(sizes))
        return [self.subset(part) for part in torch.split(perm, sizes)]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[TabularBatch]:
        """Yield batches of ``batch_size`` rows; with ``shuffle``, permute once per call."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
        if len(self) == 0:
            raise ValueError("TabularDataset.batches: the data set is empty (0 rows)")
        cat, dense, targets = self.categorical, self.dense, self.targets
        if shuffle:
            perm = torch.randperm(len(self), generator=generator)
            cat, dense = cat.index_select(0, perm), dense.index_select(0, perm)
            targets = {t: y.index_select(0, perm) for t, y in targets.items()}
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            yield TabularBatch(
                TabularX(cat[start:end], dense[start:end]),
                {t: y[start:end] for t, y in targets.items()},
            )


def _rows(categorical: Tensor | None, dense: Tensor | None, targets: Mapping[str, Tensor]) -> int:
    for tensor in (dense, categorical, *targets.values()):
        if tensor is not None:
            if tensor.dim() == 0:
                raise ValueError("TabularDataset: tensors need a leading row axis")
            return int(tensor.shape[0])
    raise ValueError("TabularDataset: give categorical, dense or targets")
