"""MultiTab-Net: a multitask transformer over one token per feature and one token per task.

Sinodinos, Wei and Armanfard, "MultiTab: A Scalable Foundation for Multitask Learning on
Tabular Data", AAAI 2026 (arXiv:2511.09970), Section "MultiTab-Net". What is implemented:

* **Tokens**: every feature is one token of width ``e``: a categorical feature through an
  embedding lookup, a numerical feature ``x_j`` through its own linear map ``x_j w_j + b_j``
  followed by LayerNorm. Each of the ``t`` tasks has a learned task token ``T_i``; the sequence is
  ``[T_1 .. T_t, f_1 .. f_d]`` of shape ``(t + d, e)`` (``task_tokens="single"`` uses one task
  token read by every tower, the paper's single-token ablation).
* **Encoder**: ``N`` pre-norm blocks of inter-feature self-attention (within a sample) and a
  GELU feed-forward layer, each with a residual. With ``inter_sample=True`` every block adds the
  paper's inter-sample attention (SAINT-style: each row's flattened tokens attend to the other
  rows of the batch), after which a prediction depends on the rest of its batch.
* **Multitask masked attention** (the paper's contribution) restricts the inter-feature
  attention with a boolean mask ``M[q, k]`` (query ``q`` may not attend key ``k`` where True):
  ``"none"``; ``"txt"``: a task token may attend to no other task token (only to itself and the
  features); ``"fxt"``: no feature token may attend to a task token; ``"fxt_txt"``: both (the
  names of the authors' code, Armanfard-Lab/MultiTab). Our default is ``"txt"``, the default of
  that code's mask builder; ``benchmarks/multitab_bench.py`` compares the variants.
  ``"fxt_txt"`` cuts every path between tasks inside the encoder: task ``i``'s representation
  is then a function of the features and of ``T_i`` alone. Under ``"txt"`` alone, a task token
  still reaches another one *indirectly* from the second block on (task -> feature -> task);
  the tests check both.
* Tower ``i`` (an MLP) reads the final, LayerNorm-ed task token ``i``.

Shared part: tokenizer, task tokens and the encoder; ``features(x)`` is ``{task: (batch, e)}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tabular_types import TabularX, check_codes
from ..tasks import Task
from .experts import check_positive
from .inputs import TabularInput
from .per_task import PerTaskModel, towers

MaskVariant = Literal["none", "txt", "fxt", "fxt_txt"]
MASK_VARIANTS: tuple[str, ...] = ("none", "txt", "fxt", "fxt_txt")


def multitask_mask(n_task_tokens: int, n_features: int, variant: str) -> Tensor:
    """The ``(t + d, t + d)`` boolean attention mask of a variant; True = may not attend.

    Rows are queries, columns keys; tokens are ordered task tokens first, then features.
    Every token may always attend to itself, so no row is fully masked.
    """
    if variant not in MASK_VARIANTS:
        raise ValueError(f"multitask_mask: variant must be one of {MASK_VARIANTS}, got {variant!r}")
    t = n_task_tokens
    n = t + n_features
    mask = torch.zeros(n, n, dtype=torch.bool)
    if variant in ("fxt", "fxt_txt"):
        mask[t:, :t] = True  # feature queries may not read task keys
    if variant in ("txt", "fxt_txt"):
        mask[:t, :t] = True  # task queries may not read other task keys ...
        mask[torch.arange(t), torch.arange(t)] = False  # ... but may read their own
    return mask


def as_tabular(x: object, owner: str) -> TabularX:
    """``x`` as a :class:`TabularX`: a dense ``(batch, D)`` tensor, a ``(categorical, dense)``
    pair or a mapping with keys ``"categorical"`` and ``"dense"``."""
    if isinstance(x, Tensor):
        return TabularX(torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device), x)
    if isinstance(x, Mapping):
        if set(x) != {"categorical", "dense"}:
            raise TypeError(f"{owner}: expects keys 'categorical' and 'dense', got {sorted(x)}")
        return TabularX(x["categorical"], x["dense"])
    if isinstance(x, tuple) and len(x) == 2:
        return TabularX(*x)
    raise TypeError(
        f"{owner}: expects a (batch, features) tensor or a TabularX, got {type(x).__name__}"
    )


class FieldTokenizer(nn.Module):
    """One ``d_token``-wide token per feature ("field"): ``(batch, n_fields, d_token)``.

    Categorical columns are embedded by a :class:`TabularInput`'s tables (the caller's, so that
    a benchmark can hand every architecture the same input layer), then projected to
    ``d_token`` per embedding width where the width differs; dense feature ``j`` becomes
    ``LayerNorm(x_j w_j + b_j)``. Token order: categorical columns grouped by embedding width
    (in column order within a width, as :meth:`TabularInput.embed` returns them), then the
    dense features. The order carries no meaning: no positional encoding is added.

    Give ``in_features`` (the input is then a dense ``(batch, in_features)`` tensor) or
    ``input_layer`` (a :class:`TabularInput`; the input is a :class:`TabularX`).
    """

    def __init__(
        self,
        owner: str,
        d_token: int,
        in_features: int | None = None,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        check_positive(owner, d_token=d_token)
        self.owner = owner
        self.embedder: TabularInput | None = None
        if input_layer is not None:
            if not isinstance(input_layer, TabularInput):
                raise TypeError(
                    f"{owner}: input_layer must be a TabularInput (one token per column is "
                    f"needed), got {type(input_layer).__name__}"
                )
            if in_features is not None and in_features != input_layer.out_features:
                raise ValueError(
                    f"{owner}: in_features={in_features} disagrees with "
                    f"input_layer.out_features={input_layer.out_features}"
                )
            self.embedder = input_layer
            n_dense = input_layer.n_dense
            n_cat = len(input_layer.cardinalities)
            self.projections = nn.ModuleList(
                [
                    nn.Identity() if w == d_token else nn.Linear(w, d_token)
                    for w in input_layer.widths
                ]
            )
        else:
            if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
                raise ValueError(f"{owner}: give in_features (a positive int) or an input_layer")
            n_dense, n_cat = in_features, 0
            self.projections = nn.ModuleList()
        self.n_dense = n_dense
        self.n_categorical = n_cat
        self.d_token = d_token
        bound = 1.0 / math.sqrt(d_token)
        self.dense_weight = nn.Parameter(torch.empty(n_dense, d_token).uniform_(-bound, bound))
        self.dense_bias = nn.Parameter(torch.empty(n_dense, d_token).uniform_(-bound, bound))
        self.dense_norm = nn.LayerNorm(d_token)

    @property
    def n_fields(self) -> int:
        return self.n_categorical + self.n_dense

    def forward(self, x: object) -> Tensor:
        cat, dense = as_tabular(x, self.owner)
        if dense.dim() != 2 or dense.shape[1] != self.n_dense:
            raise ValueError(
                f"{self.owner}: expected dense features of shape (batch, {self.n_dense}), got "
                f"{tuple(dense.shape)}"
            )
        if cat.dim() != 2 or cat.shape[1] != self.n_categorical:
            raise ValueError(
                f"{self.owner}: expected categorical codes of shape (batch, "
                f"{self.n_categorical}), got {tuple(cat.shape)}"
            )
        parts: list[Tensor] = []
        if self.embedder is not None and self.n_categorical:
            if self.embedder.check:
                check_codes(cat, self.embedder.cardinalities, self.owner)
            for emb, proj in zip(self.embedder.embed(cat), self.projections, strict=True):
                parts.append(proj(emb))
        if self.n_dense:
            tokens = dense.unsqueeze(-1) * self.dense_weight + self.dense_bias
            parts.append(self.dense_norm(tokens))
        return torch.cat(parts, dim=1)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with an optional boolean mask.

    ``softmax(Q K^T / sqrt(d_head) + (-inf where mask)) V`` per head, written out with plain
    tensor operations (no fused kernel) so that ``manytask.backward``'s batched
    (``vmap``-ed) backward goes through it.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("SelfAttention", dim=dim, n_heads=n_heads)
        if dim % n_heads:
            raise ValueError(f"SelfAttention: dim={dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        self.last_attention: Tensor | None = None  # (batch, heads, L, L), detached

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, dim = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).view(b, n, 3, h, dim // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // h)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        self.last_attention = attn.detach()
        attn = F.dropout(attn, self.dropout, self.training)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x), mask)`` then ``x + FF(LN(x))`` (GELU)."""

    def __init__(self, dim: int, n_heads: int, ff_hidden: int, dropout: float, att_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, n_heads, att_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_hidden, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), mask))
        return x + self.ff(self.norm2(x))


class MultiTabEncoder(nn.Module):
    """Tokenizer, task tokens and ``N`` masked blocks; returns the final task tokens."""

    def __init__(
        self,
        tokenizer: FieldTokenizer,
        task_names: Sequence[str],
        *,
        n_layers: int,
        n_heads: int,
        ff_hidden: int,
        mask: str,
        single_task_token: bool,
        inter_sample: bool,
        dropout: float,
        att_dropout: float,
    ) -> None:
        super().__init__()
        d = tokenizer.d_token
        self.tokenizer = tokenizer
        self.task_names = tuple(task_names)
        self.single_task_token = single_task_token
        n_task_tokens = 1 if single_task_token else len(task_names)
        self.task_tokens = nn.Parameter(torch.randn(n_task_tokens, d) * 0.02)
        self.register_buffer("mask", multitask_mask(n_task_tokens, tokenizer.n_fields, mask))
        self.variant = mask
        self.blocks = nn.ModuleList(
            [EncoderBlock(d, n_heads, ff_hidden, dropout, att_dropout) for _ in range(n_layers)]
        )
        n_tokens = n_task_tokens + tokenizer.n_fields
        self.row_blocks = nn.ModuleList(
            [
                EncoderBlock(d * n_tokens, n_heads, ff_hidden, dropout, att_dropout)
                for _ in range(n_layers if inter_sample else 0)
            ]
        )
        self.norm = nn.LayerNorm(d)

    def tokens(self, x: object) -> Tensor:
        """All final tokens ``(batch, t + d, e)``, task tokens first (before the last norm)."""
        fields = self.tokenizer(x)
        b = fields.shape[0]
        h = torch.cat([self.task_tokens.expand(b, -1, -1), fields], dim=1)
        mask: Tensor | None = None if self.variant == "none" else self.mask  # type: ignore[assignment]
        for i, block in enumerate(self.blocks):
            h = block(h, mask)
            if self.row_blocks:
                # Inter-sample attention: the batch is one sequence of flattened rows.
                h = self.row_blocks[i](h.reshape(1, b, -1)).reshape(h.shape)
        return h

    def forward(self, x: object) -> dict[str, Tensor]:
        h = self.tokens(x)
        if self.single_task_token:
            out = self.norm(h[:, 0])
            return {t: out for t in self.task_names}
        task_out = self.norm(h[:, : len(self.task_names)])
        return {t: task_out[:, i] for i, t in enumerate(self.task_names)}


class MultiTabNet(PerTaskModel):
    """MultiTab-Net (Sinodinos et al., AAAI 2026): masked multitask transformer for tables.

    Args:
        tasks: the tasks; each gets a task token (unless ``task_tokens="single"``) and a tower.
        in_features: number of dense features of a ``(batch, in_features)`` tensor input.
        input_layer: a :class:`~manytask.data.tabular.TabularInput` for categorical + dense
            inputs (:class:`TabularX`); its tables embed the categorical columns.
        d_token: token width ``e``.
        n_layers: number of encoder blocks ``N``.
        n_heads: attention heads (must divide ``d_token``).
        ff_hidden: hidden width of each block's feed-forward layer.
        mask: ``"none"``, ``"txt"`` (default), ``"fxt"`` or ``"fxt_txt"`` (module docstring).
        task_tokens: ``"per_task"`` (the paper's multi-token design) or ``"single"``.
        inter_sample: add inter-sample (row) attention to every block.
        tower_hidden: hidden widths of each task tower.
        dropout: dropout in the blocks' feed-forward paths and towers.
        attention_dropout: dropout on attention weights.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        input_layer: nn.Module | None = None,
        d_token: int = 32,
        n_layers: int = 3,
        n_heads: int = 4,
        ff_hidden: int = 64,
        mask: MaskVariant = "txt",
        task_tokens: Literal["per_task", "single"] = "per_task",
        inter_sample: bool = False,
        tower_hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, n_layers=n_layers, n_heads=n_heads, ff_hidden=ff_hidden)
        if mask not in MASK_VARIANTS:
            raise ValueError(f"{owner}: mask must be one of {MASK_VARIANTS}, got {mask!r}")
        if task_tokens not in ("per_task", "single"):
            raise ValueError(
                f"{owner}: task_tokens must be 'per_task' or 'single', got {task_tokens!r}"
            )
        if d_token % n_heads:
            raise ValueError(f"{owner}: d_token={d_token} is not divisible by n_heads={n_heads}")
        tokenizer = FieldTokenizer(owner, d_token, in_features, input_layer)
        heads = towers(owner, tasks, d_token, tower_hidden, dropout)
        encoder = MultiTabEncoder(
            tokenizer,
            list(heads),
            n_layers=n_layers,
            n_heads=n_heads,
            ff_hidden=ff_hidden,
            mask=mask,
            single_task_token=task_tokens == "single",
            inter_sample=inter_sample,
            dropout=dropout,
            att_dropout=attention_dropout,
        )
        super().__init__(encoder, heads)
