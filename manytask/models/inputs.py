"""Input layers of the tabular architectures: :class:`TabularInput`, embeddings of the
categorical columns concatenated with the dense features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..tabular_types import INT_DTYPES, TabularX, check_codes


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
            or cat.dtype not in INT_DTYPES
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
