"""Tabular types that data sets and models both use, below both (so data and models never
import each other): the model input :class:`TabularX` and the code-range check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class TabularX(NamedTuple):
    """Model input: categorical codes ``(batch, C)`` and dense features ``(batch, D)``."""

    categorical: Tensor
    dense: Tensor


def check_codes(categorical: Tensor, cardinalities: Sequence[int], where: str) -> None:
    """Raise ``ValueError`` naming the first column whose codes fall outside its vocabulary."""
    if categorical.shape[1] != len(cardinalities):
        raise ValueError(
            f"{where}: {categorical.shape[1]} categorical columns but "
            f"{len(cardinalities)} cardinalities"
        )
    if categorical.numel() == 0:
        return
    cards = torch.as_tensor(cardinalities, dtype=categorical.dtype, device=categorical.device)
    bad = ((categorical < 0) | (categorical >= cards)).any(0)
    if bool(bad.any()):
        col = int(bad.nonzero()[0, 0])
        lo, hi = int(categorical[:, col].min()), int(categorical[:, col].max())
        raise ValueError(
            f"{where}: categorical column {col} has codes in [{lo}, {hi}], outside "
            f"[0, {cardinalities[col]})"
        )
