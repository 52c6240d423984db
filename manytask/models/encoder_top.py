"""The top layers of a sentence encoder as a multi-task model (the fine-tuning path; the
data side, cached lower-layer states, is :mod:`manytask.data.hidden_states`, and
:func:`manytask.training.finetune.prepare_finetune` builds both).

* :class:`TopLayers` is the shared part of :class:`EncoderTop`: copies of the top ``n`` layers
  initialised from the encoder's weights, then the attention-masked mean over tokens and L2
  normalisation (Sentence-BERT's MEAN pooling, Reimers and Gurevych, EMNLP 2019, Section 3,
  exactly what the frozen path embeds), then an optional MLP trunk. With the trunk left out
  and before any training, it reproduces the frozen embedding of every sentence.
* :class:`EncoderTop` is a :class:`~manytask.models.MultiTaskModel`: the heads read the pooled
  (or trunk) features, so every balancer runs on it, in ``exact`` and ``feature`` mode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks import Task
from ..transformer_layers import check_top_layers, encoder_layers, mean_pool, run_layers
from .base import MultiTaskModel, mlp


class TopLayers(nn.Module):
    """The shared part of :class:`EncoderTop`: the top transformer layers, masked mean pooling
    (L2-normalised when ``normalize``, as the frozen embeddings are), then ``trunk`` if given.

    Input: ``{"hidden": (B, L, H), "mask": (B, L)}``, a pair ``(hidden, mask)``, or one tensor
    (B, L, H + 1) with the mask as the last channel (for callers that need a single tensor).
    Hidden states are cast to the layers' dtype (the cache holds float16), and positions past
    the batch's last real token are dropped first: padding costs no compute and, masked out,
    changes nothing.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        *,
        normalize: bool = True,
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(layers) == 0:
            raise ValueError("TopLayers: needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.normalize = normalize
        self.trunk = trunk

    @staticmethod
    def split_input(x: Any) -> tuple[Tensor, Tensor]:
        """``(hidden, mask)`` from any of the accepted input layouts."""
        if isinstance(x, Mapping):
            if set(x) != {"hidden", "mask"}:
                raise ValueError(
                    f"TopLayers: input keys must be 'hidden' and 'mask', got {list(x)}"
                )
            hidden, mask = x["hidden"], x["mask"]
        elif isinstance(x, tuple | list) and len(x) == 2:
            hidden, mask = x
        elif isinstance(x, Tensor) and x.dim() == 3:
            hidden, mask = x[..., :-1], x[..., -1]
        else:
            raise TypeError(
                "TopLayers: input must be {'hidden', 'mask'}, (hidden, mask) or a packed "
                f"(B, L, H + 1) tensor, got {type(x).__name__}"
            )
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"TopLayers: hidden must be (B, L, H) and mask (B, L), got "
                f"{tuple(hidden.shape)} and {tuple(mask.shape)}"
            )
        return hidden, mask

    def forward(self, x: Any) -> Tensor:
        hidden, mask = self.split_input(x)
        try:
            used = torch.nonzero(mask.any(0))
            keep = int(used[-1, 0]) + 1 if used.numel() else 1
        except RuntimeError:
            # Inside torch.func.vmap (per-sample gradients, as Fisher merging takes them) a
            # shape cannot depend on the data: keep every position (padding is masked anyway).
            keep = mask.shape[1]
        dtype = next(self.layers.parameters()).dtype
        hidden = run_layers(self.layers, hidden[:, :keep].to(dtype), mask[:, :keep])
        pooled = mean_pool(hidden, mask[:, :keep], normalize=self.normalize)
        return pooled if self.trunk is None else self.trunk(pooled)


class EncoderTop(MultiTaskModel):
    """Top encoder layers shared by all tasks, one head per task.

    The features (what the heads read, and what ``feature`` mode differentiates) are the
    pooled, normalised sentence embeddings, or the trunk's output when ``hidden`` is given.

    Args:
        tasks: the tasks; each gets a head ending in ``task.out_features`` outputs.
        layers: the transformer layers to train (used as given: pass copies).
        width: their hidden size H.
        hidden: widths of an optional shared MLP trunk after pooling (none: no trunk).
        head_hidden: widths of each head's hidden layers (none: a linear head).
        normalize: L2-normalise the pooled embedding (the frozen path does).
        dropout: dropout after each hidden layer of the trunk.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        layers: Sequence[nn.Module],
        width: int,
        *,
        hidden: Sequence[int] = (),
        head_hidden: Sequence[int] = (),
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"EncoderTop: width must be a positive integer, got {width!r}")
        trunk = mlp([width, *hidden], dropout=dropout) if hidden else None
        feature_dim = hidden[-1] if hidden else width
        heads = {
            t.name: mlp([feature_dim, *head_hidden, t.out_features], last_activation=False)
            for t in tasks
        }
        super().__init__(TopLayers(layers, normalize=normalize, trunk=trunk), heads)

    @classmethod
    def from_encoder(
        cls, tasks: Sequence[Task], model: Any, n_layers: int, **kwargs: Any
    ) -> EncoderTop:
        """Trainable copies of the top ``n_layers`` layers of ``model`` (left untouched)."""
        layers = encoder_layers(model, "EncoderTop.from_encoder")
        n = check_top_layers(n_layers, len(layers), "EncoderTop.from_encoder")
        copies = [copy.deepcopy(layer).requires_grad_(True) for layer in layers[len(layers) - n :]]
        return cls(tasks, copies, int(model.config.hidden_size), **kwargs)

    @property
    def top(self) -> TopLayers:
        if not isinstance(self.shared, TopLayers):  # only if someone replaced it
            raise TypeError(f"EncoderTop: shared part is a {type(self.shared).__name__}")
        return self.shared

    def optimizer_factory(
        self, lr: float, layers_lr: float
    ) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
        """A Trainer ``optimizer=``: Adam with ``layers_lr`` for the transformer layers and
        ``lr`` for every other parameter it is given (trunk, heads, a balancer's own)."""
        for key, value in (("lr", lr), ("layers_lr", layers_lr)):
            if not value > 0:
                raise ValueError(f"EncoderTop.optimizer_factory: {key} must be > 0, got {value}")
        in_layers = {id(p) for p in self.top.layers.parameters()}

        def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            groups = [
                {"params": [p for p in params if id(p) in in_layers], "lr": layers_lr},
                {"params": [p for p in params if id(p) not in in_layers], "lr": lr},
            ]
            return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)

        return make


def top_state(encoder_state: Mapping[str, Tensor], first: int, n_layers: int) -> dict[str, Tensor]:
    """The state dict of :class:`TopLayers` (no trunk) over layers ``first .. first + n - 1``,
    read out of a whole-encoder state dict (``encoder.layer.<i>.…`` keys)."""
    out = {}
    for j in range(n_layers):
        prefix = f"encoder.layer.{first + j}."
        for key, value in encoder_state.items():
            if key.startswith(prefix):
                out[f"layers.{j}.{key[len(prefix) :]}"] = value
    return out


