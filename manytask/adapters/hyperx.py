"""Hyper-X: one hypernetwork generating adapters from task, language and layer embeddings."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..registry import Param
from .base import ADAPTERS, AdapterMethod, positive_int
from .layer import Context, in_out


class HyperXDelta(nn.Module):
    """A generated bottleneck adapter on the output of one layer (no own parameters)."""

    def __init__(self, owner: HyperX, index: int) -> None:
        super().__init__()
        self.owner = [owner]
        self.index = index

    def forward(self, x: Tensor, y: Tensor, ctx: Context) -> Tensor:
        owner = self.owner[0]
        langs = ctx.languages
        if langs is None:
            langs = torch.zeros_like(ctx.tasks)
        combo = ctx.tasks.long() * owner.n_languages + langs.long()
        unique, inverse = torch.unique(combo, return_inverse=True)
        down, up = owner.generate(unique // owner.n_languages, unique % owner.n_languages,
                                  self.index)
        y3 = y.unsqueeze(1) if y.dim() == 2 else y
        h = torch.relu(y3.to(down.dtype).bmm(down[inverse].transpose(1, 2)))  # (B, L, m)
        out = h.bmm(up[inverse].transpose(1, 2))
        return out.squeeze(1) if y.dim() == 2 else out


@ADAPTERS.register()
class HyperX(AdapterMethod):
    """Hyper-X (Üstün et al., 2022, "Hyper-X: A Unified Hypernetwork for Multi-Task
    Multilingual Transfer", Sec. 2, Eq. 1-2): the source embedding ``s = P([t; l; i])``
    (task, language and layer embeddings through a two-layer projection P) is mapped by one
    hypernetwork to the weights of layer i's bottleneck adapter,
    ``D = reshape(W_D s)`` (m x d), ``U = reshape(W_U s)`` (d x m), applied to the adapted
    module's output: ``y + U relu(D y)``. Any (task, language) pair gets an adapter,
    including pairs never trained together. ``W_U`` starts at zero (the model starts
    unchanged). All targeted modules must have the same output size d."""

    name = "hyperx"
    params: ClassVar[dict[str, Param]] = {
        "bottleneck": Param("int", 16, "adapter bottleneck m", low=1),
        "embed_dim": Param("int", 32, "task/language/layer embedding size", low=1),
        "source_dim": Param("int", 64, "source embedding size after P", low=1),
        "n_languages": Param("int", 1, "number of languages", low=1)}

    def __init__(self, n_tasks: int, bottleneck: int = 16, embed_dim: int = 32,
                 source_dim: int = 64, n_languages: int = 1) -> None:
        super().__init__(n_tasks)
        self.bottleneck = positive_int(bottleneck, "bottleneck", self.name)
        self.embed_dim = positive_int(embed_dim, "embed_dim", self.name)
        self.source_dim = positive_int(source_dim, "source_dim", self.name)
        self.n_languages = positive_int(n_languages, "n_languages", self.name)
        self.task_embedding = nn.Embedding(n_tasks, embed_dim)
        self.language_embedding = nn.Embedding(self.n_languages, embed_dim)
        self.layer_embedding = nn.ParameterList()
        self.projection = nn.Sequential(nn.Linear(3 * embed_dim, source_dim), nn.ReLU(),
                                        nn.Linear(source_dim, source_dim))
        self.width = 0
        self.down: nn.Linear | None = None
        self.up: nn.Linear | None = None

    def make(self, name: str, module: nn.Module) -> nn.Module:
        width = in_out(module)[1]
        if self.width == 0:
            self.width = width
            self.down = nn.Linear(self.source_dim, self.bottleneck * width)
            self.up = nn.Linear(self.source_dim, width * self.bottleneck)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif width != self.width:
            raise ValueError(f"hyperx: targeted modules must share one output size; {name} "
                             f"has {width}, others {self.width}")
        self.layer_embedding.append(nn.Parameter(torch.randn(self.embed_dim) * 0.02))
        return HyperXDelta(self, len(self.layer_embedding) - 1)

    def generate(self, tasks: Tensor, languages: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Down (n, m, d) and up (n, d, m) projections for n (task, language) pairs at
        adapted layer ``layer``."""
        if self.down is None or self.up is None:
            raise RuntimeError("hyperx: no layer was adapted")
        if languages.numel() and int(languages.max()) >= self.n_languages:
            raise ValueError(f"hyperx: language ids must be < n_languages {self.n_languages}")
        layer_emb = self.layer_embedding[layer].expand(tasks.shape[0], -1)
        source = self.projection(torch.cat([self.task_embedding(tasks),
                                            self.language_embedding(languages), layer_emb], -1))
        n = tasks.shape[0]
        down = self.down(source).view(n, self.bottleneck, self.width)
        up = self.up(source).view(n, self.width, self.bottleneck)
        return down, up
