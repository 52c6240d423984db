"""APEM: attention and squeeze-and-excitation over feature fields, and a task pattern selector.

Tao, Ha, Guo, Ma, Cheng and Lin, "Adaptive Pattern Extraction Multi-Task Learning for
Multi-Step Conversion Estimations", 2023 (arXiv:2301.02494). Its two modules, as we read them
(the paper's exact equations could not be checked offline; what follows is our reading of its
description, stated so that it can be checked):

* **DeepAuto Group Transformer** (field enrichment): the feature fields ``E = [e_1 .. e_F]``
  (one ``d``-wide embedding per field) go through ``n_layers`` blocks of *set* attention,
  ``H = LN(E + MHA(E))``, ``H = LN(H + FF(H))``, with no positional encoding (fields are a set,
  as in AutoInt), then a squeeze-and-excitation over fields: ``z_f = v_f . H_f``,
  ``a = sigmoid(W_2 ReLU(W_1 z))`` of length ``F`` (reduction ratio ``se_ratio``), and
  ``H_f <- a_f H_f``. The squeeze is a learned projection per field: FiBiNET's mean over the
  ``d`` channels would be constant here, since every token leaves a LayerNorm.
* **Pattern Selector** with adaptive task-indicator vectors: task ``k`` has a learned
  indicator ``tau_k``, adapted to the sample by ``i_k(x) = tau_k + W_a mean_f(H_f)``; its pattern
  scores over fields are ``s_k = softmax_f(i_k . (W_s H_f) / sqrt(d))`` and the pattern tower
  ``k`` reads is ``P_k = flatten_f(F * s_{k,f} H_f)`` (scaled by ``F`` so that uniform scores
  leave ``H`` unchanged). The scores are recorded as gates over fields (``gate_weights``,
  ``"selector/{task}"``, columns ``"field/{j}"``) for :func:`~manytask.models.expert_report`.

Multi-step conversion (the paper's setting) chains the task probabilities
(``p(conversion) = p(click) p(conversion | click)``); that part is the ESMM/AITM construction
(:mod:`manytask.models.esmm`) and is not repeated here: APEM's towers output each task's own
logit. Shared part: tokenizer, transformer, SE and selector; ``features(x)`` is
``{task: P_k}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..tasks import Task
from .experts import Routed, check_positive
from .multitab import FieldTokenizer, SelfAttention
from .per_task import PerTaskModel, towers


class SetAttentionBlock(nn.Module):
    """Post-norm set attention over fields: ``H = LN(E + MHA(E))``, ``LN(H + FF(H))``."""

    def __init__(self, dim: int, n_heads: int, ff_hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, n_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_hidden, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ff(x))


class FieldExcitation(nn.Module):
    """Squeeze-and-excitation over fields (Hu et al., 2018, applied to fields as in FiBiNET):
    ``z_f = v_f . H_f`` (a learned squeeze vector per field), ``a = sigmoid(W_2 ReLU(W_1 z))``,
    one weight per field; returns ``a_f H_f``."""

    def __init__(self, n_fields: int, dim: int, ratio: int) -> None:
        super().__init__()
        check_positive("FieldExcitation", n_fields=n_fields, dim=dim, ratio=ratio)
        hidden = max(4, -(-n_fields // ratio))  # at least 4 units: fewer die together (ReLU)
        self.project = nn.Parameter(torch.empty(n_fields, dim).uniform_(-1, 1) / math.sqrt(dim))
        self.excite = nn.Sequential(
            nn.Linear(n_fields, hidden), nn.ReLU(), nn.Linear(hidden, n_fields), nn.Sigmoid()
        )
        self.last_weights: Tensor | None = None  # (batch, F), detached

    def forward(self, fields: Tensor) -> Tensor:
        weights = self.excite((fields * self.project).sum(-1))
        self.last_weights = weights.detach()
        return fields * weights.unsqueeze(-1)


class PatternSelector(Routed):
    """Per-task softmax over fields driven by adaptive task-indicator vectors (module docstring)."""

    def __init__(self, task_names: Sequence[str], n_fields: int, dim: int) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.n_fields = n_fields
        self.indicators = nn.Parameter(torch.randn(len(task_names), dim) * 0.02)
        self.adapt = nn.Linear(dim, dim)  # W_a: sample-dependent shift of every indicator
        self.keys = nn.Linear(dim, dim, bias=False)  # W_s
        self.field_names = tuple(f"field/{j}" for j in range(n_fields))

    def forward(self, fields: Tensor) -> dict[str, Tensor]:
        b, f, d = fields.shape
        queries = self.indicators.unsqueeze(1) + self.adapt(fields.mean(1)).unsqueeze(0)  # K,B,d
        scores = torch.einsum("kbd,bfd->kbf", queries, self.keys(fields)) / math.sqrt(d)
        select = torch.softmax(scores, dim=-1)  # (K, batch, F)
        patterns = (f * select).unsqueeze(-1) * fields.unsqueeze(0)  # (K, batch, F, d)
        for i, t in enumerate(self.task_names):
            self.record(f"selector/{t}", select[i], self.field_names)
        return {t: patterns[i].reshape(b, f * d) for i, t in enumerate(self.task_names)}


class APEMBody(nn.Module):
    """Tokenizer -> set-attention blocks -> field excitation -> pattern selector."""

    def __init__(
        self,
        tokenizer: FieldTokenizer,
        task_names: Sequence[str],
        n_layers: int,
        n_heads: int,
        ff_hidden: int,
        se_ratio: int,
        dropout: float,
    ) -> None:
        super().__init__()
        d = tokenizer.d_token
        self.tokenizer = tokenizer
        self.blocks = nn.ModuleList(
            [SetAttentionBlock(d, n_heads, ff_hidden, dropout) for _ in range(n_layers)]
        )
        self.excitation = FieldExcitation(tokenizer.n_fields, d, se_ratio)
        self.selector = PatternSelector(task_names, tokenizer.n_fields, d)

    def enriched(self, x: object) -> Tensor:
        """The enriched field features ``H`` (after attention and excitation)."""
        h = self.tokenizer(x)
        for block in self.blocks:
            h = block(h)
        return self.excitation(h)

    def forward(self, x: object) -> dict[str, Tensor]:
        return self.selector(self.enriched(x))


class APEM(PerTaskModel):
    """Adaptive Pattern Extraction Multi-task model (Tao et al., 2023).

    Args:
        tasks: the tasks; each gets a task-indicator vector and a tower.
        in_features: number of dense features of a ``(batch, in_features)`` tensor input.
        input_layer: a :class:`~manytask.data.tabular.TabularInput` for categorical + dense
            inputs; its tables embed the categorical columns.
        d_field: width ``d`` of every field embedding.
        n_layers: set-attention blocks of the DeepAuto Group Transformer.
        n_heads: attention heads (must divide ``d_field``).
        ff_hidden: feed-forward width inside each block.
        se_ratio: squeeze-and-excitation reduction ratio over fields.
        tower_hidden: hidden widths of each task tower (reading ``F * d_field`` values).
        dropout: dropout in the blocks and towers.

    ``gate_weights["selector/{task}"]`` holds the last forward's ``(batch, F)`` field scores.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        input_layer: nn.Module | None = None,
        d_field: int = 16,
        n_layers: int = 2,
        n_heads: int = 2,
        ff_hidden: int = 32,
        se_ratio: int = 2,
        tower_hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, n_layers=n_layers, n_heads=n_heads, ff_hidden=ff_hidden)
        if d_field % n_heads:
            raise ValueError(f"{owner}: d_field={d_field} is not divisible by n_heads={n_heads}")
        tokenizer = FieldTokenizer(owner, d_field, in_features, input_layer)
        heads = towers(owner, tasks, tokenizer.n_fields * d_field, tower_hidden, dropout)
        body = APEMBody(tokenizer, list(heads), n_layers, n_heads, ff_hidden, se_ratio, dropout)
        super().__init__(body, heads)
