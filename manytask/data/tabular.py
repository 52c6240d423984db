"""Tabular multi-task data: tensors sliced per batch, and an embedding + dense input layer.

A data set is three things held as whole tensors: categorical codes ``(N, C)`` (int64), dense
features ``(N, D)`` (float32) and targets ``{task: (N, ...)}``. An epoch permutes them once
(one gather per tensor) and then yields contiguous slices, so the hot path has no per-sample
Python object at all. Inputs travel as :class:`TabularX`, a named pair of tensors that every
model with a :class:`TabularInput` layer accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class TabularX(NamedTuple):
    """Model input: categorical codes ``(batch, C)`` and dense features ``(batch, D)``."""

    categorical: Tensor
    dense: Tensor


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
        if categorical.dim() != 2 or categorical.dtype not in _INT_DTYPES:
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


class TabularInput(nn.Module):
    """Embeddings of the categorical columns, concatenated with the dense features.

    All columns with the same embedding width share one table (rows offset per column), so a
    batch is embedded with one lookup per distinct width. Output: ``(batch, out_features)`` with
    the embeddings (grouped by width, in column order within a width) followed by the dense
    features. Reused by every tabular architecture.

    Args:
        cardinalities: vocabulary size of each categorical column.
        n_dense: number of dense features.
        embedding_dim: one width for every column, or one per column.
        check: verify on each forward that codes lie in range (a misplaced code would otherwise
            silently read another column's rows of the shared table).
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_dense: int,
        embedding_dim: int | Sequence[int] = 16,
        *,
        check: bool = True,
    ) -> None:
        super().__init__()
        cards = [int(c) for c in cardinalities]
        if any(c < 1 for c in cards):
            raise ValueError(f"TabularInput: cardinalities must be positive, got {cards}")
        if isinstance(n_dense, bool) or not isinstance(n_dense, int) or n_dense < 0:
            raise ValueError(
                f"TabularInput: n_dense must be a non-negative integer, got {n_dense!r}"
            )
        dims = (
            [embedding_dim] * len(cards) if isinstance(embedding_dim, int) else list(embedding_dim)
        )
        if len(dims) != len(cards) or any(d < 1 for d in dims):
            raise ValueError(
                f"TabularInput: need one positive embedding width per column "
                f"({len(cards)}), got {dims}"
            )
        if not cards and n_dense == 0:
            raise ValueError("TabularInput: no categorical and no dense feature")
        self.cardinalities = tuple(cards)
        self.n_dense = n_dense
        self.embedding_dims = tuple(dims)
        self.check = check
        self.widths = tuple(sorted(set(dims)))
        self.tables = nn.ModuleList()
        for w in self.widths:
            cols = [i for i, d in enumerate(dims) if d == w]
            sizes = [cards[i] for i in cols]
            offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
            table = nn.Embedding(sum(sizes), w)
            nn.init.normal_(table.weight, std=0.01)
            self.tables.append(table)
            self.register_buffer(f"cols_{w}", torch.tensor(cols, dtype=torch.long))
            self.register_buffer(f"offsets_{w}", offsets)
        self.register_buffer("cards", torch.tensor(cards, dtype=torch.long))
        self.out_features = sum(dims) + n_dense

    def _check(self, x: TabularX) -> None:
        cat, dense = x
        if (
            cat.dim() != 2
            or cat.shape[1] != len(self.cardinalities)
            or cat.dtype not in _INT_DTYPES
        ):
            raise ValueError(
                f"TabularInput: expected integer categorical codes of shape (batch, "
                f"{len(self.cardinalities)}), got {cat.dtype} {tuple(cat.shape)}"
            )
        if dense.dim() != 2 or dense.shape[1] != self.n_dense:
            raise ValueError(
                f"TabularInput: expected dense features of shape (batch, {self.n_dense}), "
                f"got {tuple(dense.shape)}"
            )
        if self.check:
            check_codes(cat, self.cardinalities, "TabularInput")

    def embed(self, categorical: Tensor) -> list[Tensor]:
        """Embeddings ``(batch, C_w, w)`` for each distinct width ``w`` (see ``widths``)."""
        out = []
        for w, table in zip(self.widths, self.tables, strict=True):
            cols: Tensor = getattr(self, f"cols_{w}")
            offsets: Tensor = getattr(self, f"offsets_{w}")
            codes = categorical if cols.numel() == categorical.shape[1] else categorical[:, cols]
            out.append(table(codes.long() + offsets))
        return out

    def forward(self, x: TabularX | tuple[Tensor, Tensor] | Mapping[str, Tensor]) -> Tensor:
        """Embed ``x``: a :class:`TabularX`, a ``(categorical, dense)`` pair, or a mapping with
        keys ``"categorical"`` and ``"dense"`` (what :class:`manytask.data.TensorBatches` yields
        for ``x={"categorical": ..., "dense": ...}``)."""
        if isinstance(x, Mapping):
            if set(x) != {"categorical", "dense"}:
                raise TypeError(
                    f"TabularInput expects keys 'categorical' and 'dense', got {sorted(x)}"
                )
            x = TabularX(x["categorical"], x["dense"])
        elif not isinstance(x, tuple) or len(x) != 2:
            raise TypeError(
                f"TabularInput expects a TabularX (categorical, dense), got {type(x).__name__}"
            )
        x = TabularX(*x)
        self._check(x)
        parts = [e.flatten(1) for e in self.embed(x.categorical)]
        parts.append(x.dense.to(parts[0].dtype) if parts else x.dense)
        return torch.cat(parts, dim=1)
