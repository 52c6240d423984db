"""Per-task gradient information: the K x K Gramian, exactly or at the feature level.

Let ``L_1..L_K`` be the task losses, ``z`` the shared features the heads read, and ``theta``
the shared parameters. Most gradient-balancing methods need only the Gramian
``G_ij = <g_i, g_j>`` of the per-task gradients ``g_k``:

* ``mode="feature"``: ``g_k = dL_k/dz``. Each ``g_k`` costs a backward through head ``k``
  alone (cheap); ``G`` is a sum over samples, which is what MGDA-UB (Sener and Koltun, 2018,
  Section 3.3) uses.
* ``mode="exact"``: ``g_k = dL_k/dtheta``. After the head passes above, the K feature
  gradients are pushed through the shared part in **one batched backward**
  (``torch.autograd.grad(..., is_grads_batched=True)``), giving the Jacobian block by block;
  ``G`` is accumulated one parameter tensor at a time.

Both modes assume that the losses depend on the shared parameters only through ``features``,
which the :class:`~manytask.models.MultiTaskModel` contract guarantees.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Mode = Literal["exact", "feature"]
MODES: tuple[Mode, ...] = ("exact", "feature")


Features = Tensor | Iterable[Tensor] | Mapping[str, Tensor]


def feature_tensors(features: Features) -> list[Tensor]:
    """The tensors of ``features`` (a tensor, a sequence or a mapping) that require grad."""
    if isinstance(features, Tensor):
        tensors = [features]
    elif isinstance(features, Mapping):
        tensors = list(features.values())
    else:
        tensors = list(features)
    return [t for t in tensors if t.requires_grad]


@dataclass
class TaskGradients:
    """The Gramian (float64, K x K), the per-task feature gradients used to apply weights, and
    the Jacobian blocks the Gramian was computed from (w.r.t. the shared parameters in exact
    mode, the features in feature mode), each of shape (K, *tensor.shape)."""

    gramian: Tensor
    feature_grads: list[Tensor]  # one per feature tensor, each of shape (K, *feature.shape)
    blocks: list[Tensor]

    def jacobian_matrix(self) -> Tensor:
        """The blocks flattened and concatenated: the K x D Jacobian."""
        k = self.gramian.shape[0]
        return torch.cat([b.reshape(k, -1) for b in self.blocks], dim=1)


def feature_gradients(losses: Sequence[Tensor], features: Sequence[Tensor]) -> list[Tensor]:
    """``dL_k/dz`` for each loss and each feature tensor, stacked on a leading task axis.

    One backward per task, through that task's head only (the graph below ``features`` is not
    visited), so the cost is about one ordinary head backward per task.
    """
    per_task = [
        torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True) for loss in losses
    ]
    stacked = []
    for i, feature in enumerate(features):
        grads = [g[i] if g[i] is not None else torch.zeros_like(feature) for g in per_task]
        stacked.append(torch.stack(grads))
    return stacked


def jacobian(
    features: Sequence[Tensor], feature_grads: Sequence[Tensor], params: Sequence[Tensor]
) -> list[Tensor]:
    """Per-task gradients w.r.t. ``params``: one tensor of shape (K, *param.shape) per parameter.

    Pushes the K feature gradients through the shared part in one batched backward. Operators
    without a batching rule make PyTorch fall back to a loop; if batching fails outright we
    fall back to one backward of the shared part per task, with a warning.
    """
    k = feature_grads[0].shape[0]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_grads_batched.*")
            grads = torch.autograd.grad(
                list(features),
                list(params),
                grad_outputs=list(feature_grads),
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        return [
            g if g is not None else torch.zeros((k, *p.shape), dtype=p.dtype)
            for g, p in zip(grads, params, strict=True)
        ]
    except RuntimeError as err:  # pragma: no cover - depends on the user's operators
        warnings.warn(
            f"batched backward failed ({err}); falling back to one backward per task",
            RuntimeWarning,
            stacklevel=3,
        )
    rows = [
        torch.autograd.grad(
            list(features),
            list(params),
            grad_outputs=[g[i] for g in feature_grads],
            retain_graph=True,
            allow_unused=True,
        )
        for i in range(k)
    ]
    return [
        torch.stack([r[j] if r[j] is not None else torch.zeros_like(p) for r in rows])
        for j, p in enumerate(params)
    ]


def gramian_of(blocks: Sequence[Tensor]) -> Tensor:
    """``sum_b B_b B_b^T`` over blocks of shape (K, ...), accumulated in float64."""
    k = blocks[0].shape[0]
    gram = torch.zeros((k, k), dtype=torch.float64, device=blocks[0].device)
    for block in blocks:
        flat = block.reshape(k, -1)
        gram += (flat @ flat.T).to(torch.float64)
    return gram


def task_gradients(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    *,
    mode: Mode = "exact",
    shared_params: Sequence[Tensor] | None = None,
) -> TaskGradients:
    """Gramian of the per-task gradients, in ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    fgrads = feature_gradients(losses, features)
    if mode == "feature":
        return TaskGradients(gramian_of(fgrads), fgrads, fgrads)
    if not shared_params:
        raise ValueError("mode='exact' needs shared_params (the parameters of the shared part)")
    blocks = jacobian(features, fgrads, shared_params)
    return TaskGradients(gramian_of(blocks), fgrads, blocks)


def cosine_similarity(gramian: Tensor, eps: float = 1e-12) -> Tensor:
    """Pairwise cosine similarity of the task gradients, from their Gramian."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return gramian / (norms[:, None] * norms[None, :]).clamp_min(eps)
