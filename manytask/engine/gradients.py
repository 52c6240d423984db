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
  ``G`` is accumulated one parameter tensor at a time (:mod:`.gramian`: float32 products where
  they are certified to be as good, float64 elsewhere).

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
from torch.autograd.graph import Node

from .gramian import gramian_of
from .head_pass import head_edges, one_pass

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
    mode, the features in feature mode), each of shape (K, *tensor.shape).

    ``head_grads`` (when asked for and the graph allows it, see :func:`head_leaves`): for each
    task, the leaves its loss reaches without passing through the features (its head's
    parameters) and its gradients w.r.t. them, so that the caller need not backpropagate
    through the heads a second time."""

    gramian: Tensor
    feature_grads: list[Tensor]  # one per feature tensor, each of shape (K, *feature.shape)
    blocks: list[Tensor]
    head_grads: list[list[tuple[Tensor, Tensor]]] | None = None

    def jacobian_matrix(self) -> Tensor:
        """The blocks flattened and concatenated: the K x D Jacobian."""
        k = self.gramian.shape[0]
        return torch.cat([b.reshape(k, -1) for b in self.blocks], dim=1)


def _leaves_below(
    roots: Iterable[Node | None], stop: set[Node], features: Sequence[Tensor]
) -> tuple[list[Tensor], bool]:
    """Leaves requiring grad reachable from the autograd nodes ``roots`` without entering a
    node of ``stop`` or a feature tensor, in first-seen order; and whether the walk met one."""
    seen: set[Node] = set()
    stack = [r for r in roots if r is not None]
    leaves: list[Tensor] = []
    met = False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in stop:
            met = True
            continue
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            if any(variable is f for f in features):
                met = True
            else:
                leaves.append(variable)
            continue
        stack.extend(c for c, _ in node.next_functions if c is not None)
    return leaves, met


def trunk_leaf_ids(features: Sequence[Tensor]) -> set[int] | None:
    """Ids of the leaves the features are computed from; ``None`` if one feature tensor is
    computed from another."""
    stop = {f.grad_fn for f in features if f.grad_fn is not None}
    below = [c for node in stop for c, _ in node.next_functions]
    trunk, nested = _leaves_below(below, stop, features)
    return None if nested else {id(v) for v in trunk}


def head_leaves(
    losses: Sequence[Tensor], features: Sequence[Tensor]
) -> list[list[Tensor]] | None:
    """Per task, the leaves (head parameters) its loss reaches without crossing ``features``.

    ``None`` when the caller must use an ordinary backward instead: a leaf is also reached
    from the features (a head that reads a trunk parameter directly, as a tied output
    embedding does: the task's gradient w.r.t. it would mix the head's and the trunk's paths),
    or one feature tensor is computed from another. A walk of the autograd graph, a few
    microseconds per node.
    """
    stop = {f.grad_fn for f in features if f.grad_fn is not None}
    trunk_ids = trunk_leaf_ids(features)
    if trunk_ids is None:
        return None
    per_task = [_leaves_below([loss.grad_fn], stop, features)[0] for loss in losses]
    if any(id(v) in trunk_ids for leaves in per_task for v in leaves):
        return None
    return per_task


def feature_gradients(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    heads: Sequence[Sequence[Tensor]] | None = None,
) -> tuple[list[Tensor], list[list[tuple[Tensor, Tensor]]] | None]:
    """``dL_k/dz`` for each loss and each feature tensor, stacked on a leading task axis; and,
    with ``heads`` (per task, leaves from :func:`head_leaves`), ``dL_k`` w.r.t. those leaves.

    With ``heads`` and heads whose graphs share no node, one backward of the summed losses
    (:mod:`.head_pass`); otherwise one backward per task, through that task's head only. The
    graph below ``features`` is not visited, so the cost is about one ordinary head backward
    per task.
    """
    if heads is not None:
        found = head_edges(losses, features)
        if found is not None:
            return one_pass(losses, features, heads, found)
    n = len(features)
    per_task = [
        torch.autograd.grad(loss, [*features, *(heads[k] if heads else ())],
                            retain_graph=True, allow_unused=True)
        for k, loss in enumerate(losses)
    ]
    stacked = []
    for i, feature in enumerate(features):
        grads = [g[i] if g[i] is not None else torch.zeros_like(feature) for g in per_task]
        stacked.append(torch.stack(grads))
    if heads is None:
        return stacked, None
    own = [
        [(leaf, g) for leaf, g in zip(heads[k], grads[n:], strict=True) if g is not None]
        for k, grads in enumerate(per_task)
    ]
    return stacked, own


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


def task_gradients(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    *,
    mode: Mode = "exact",
    shared_params: Sequence[Tensor] | None = None,
    with_heads: bool = False,
) -> TaskGradients:
    """Gramian of the per-task gradients, in ``mode`` (see the module docstring); with
    ``with_heads``, also each task's gradients w.r.t. its head (``head_grads``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "exact" and not shared_params:
        raise ValueError("mode='exact' needs shared_params (the parameters of the shared part)")
    heads = head_leaves(losses, features) if with_heads else None
    fgrads, own = feature_gradients(losses, features, heads)
    if mode == "feature":
        return TaskGradients(gramian_of(fgrads), fgrads, fgrads, own)
    assert shared_params is not None
    blocks = jacobian(features, fgrads, shared_params)
    return TaskGradients(gramian_of(blocks), fgrads, blocks, own)


def cosine_similarity(gramian: Tensor, eps: float = 1e-12) -> Tensor:
    """Pairwise cosine similarity of the task gradients, from their Gramian."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return gramian / (norms[:, None] * norms[None, :]).clamp_min(eps)
