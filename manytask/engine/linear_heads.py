"""Feature-level Gramian and combination for linear heads, with no per-task gradient formed.

When task ``k``'s head is a linear map of the shared features ``z`` (B x H), ``out_k = z W_k^T
+ b_k`` with ``W_k`` of shape o_k x H, its feature gradient is ``g_k = R_k W_k`` where
``R_k = dL_k/d out_k`` (B x o_k). With ``R = [R_1 .. R_K]`` (B x O) and ``W`` the stacked
``W_k`` (O x H), the O x O matrix ``M = (R^T R) * (W W^T)`` (elementwise) holds every inner
product of the per-output pieces, so

    G_kl = <g_k, g_l> = sum over the outputs i of k and j of l of M_ij,
    sum_k w_k g_k = (R diag(w_owner)) W,

(the identity of the design note; for one output per head ``G = (R^T R) * (W W^T)``). Getting
``R`` costs one backward through the heads: a single ``autograd.grad`` of the summed losses
w.r.t. the heads' parameters (which are also each head's own gradient, ``head_grad="own"``),
with a hook on each head's product node to read ``R_k``. Cost: O(B O^2 + O^2 H + B O H),
against O(K B H) memory and O(K^2 B H) time for the stacked per-task feature gradients.

:func:`linear_heads` recognises the case on the autograd graph (one 2-D feature tensor; each
loss reaches it through exactly one ``addmm``/``mm`` node whose other inputs are the head's
own weight, transposed, and bias; no other leaf in the head) and returns ``None`` otherwise,
so the engine falls back to per-task gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.autograd.graph import Node

from .gradients import trunk_leaf_ids


@dataclass
class LinearHeads:
    """``R`` (B x O), ``W`` (O x H), ``owner`` (O: the task of each output) and each task's
    gradients w.r.t. its head's parameters (pairs of leaf and gradient)."""

    R: Tensor
    W: Tensor
    owner: Tensor
    k: int
    head_grads: list[list[tuple[Tensor, Tensor]]]

    def gramian(self) -> Tensor:
        """The K x K feature Gramian, float64."""
        R, W = self.R.double(), self.W.double()
        M = (R.T @ R) * (W @ W.T)
        if self.owner.shape[0] == self.k:  # one output per head: M is G
            return M
        S = torch.zeros((self.k, M.shape[0]), dtype=M.dtype, device=M.device)
        S[self.owner, torch.arange(M.shape[0], device=M.device)] = 1.0
        return S @ M @ S.T

    def combine(self, weights: Tensor) -> Tensor:
        """``sum_k w_k g_k`` (B x H)."""
        w = weights.to(device=self.R.device, dtype=self.R.dtype)[self.owner.to(self.R.device)]
        return (self.R * w) @ self.W


def _product_node(loss: Tensor, feature: Tensor) -> Node | None:
    """The one node where ``loss`` reads ``feature`` if it is a linear map of it, else None."""
    target = feature.grad_fn
    seen: set[Node] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    found: list[Node] = []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if getattr(node, "variable", None) is not None:
            return None  # a parameter above the product: the head is not linear (say, an MLP)
        children = [c for c, _ in node.next_functions if c is not None]
        if target in children:
            found.append(node)
            continue  # the walk stops at the product: what lies below is the head's weight
        stack.extend(children)
    if len(found) != 1:
        return None
    node = found[0]
    name = type(node).__name__
    nexts = node.next_functions
    if name == "AddmmBackward0":
        if getattr(node, "_saved_alpha", None) != 1 or getattr(node, "_saved_beta", None) != 1:
            return None
        mat1, mat2 = nexts[1], nexts[2]
    elif name == "MmBackward0":
        mat1, mat2 = nexts[0], nexts[1]
    else:
        return None
    if mat1[0] is not target or mat1[1] != feature.output_nr:
        return None
    t = mat2[0]
    if t is None or type(t).__name__ != "TBackward0":
        return None
    leaf = getattr(t.next_functions[0][0], "variable", None)
    return node if isinstance(leaf, Tensor) and leaf.dim() == 2 else None


def _head_parameters(node: Node) -> list[Tensor | None]:
    """The weight and (for ``addmm``) the bias a product node reads: ``None`` for a bias that
    is not a leaf (computed from something)."""
    addmm = type(node).__name__ == "AddmmBackward0"
    mat2 = node.next_functions[2 if addmm else 1][0]
    assert mat2 is not None
    weight: Tensor = mat2.next_functions[0][0].variable  # type: ignore[union-attr]
    if not addmm:
        return [weight]
    bias_node = node.next_functions[0][0]
    return [weight, getattr(bias_node, "variable", None)]


def linear_heads(losses: Sequence[Tensor], features: Sequence[Tensor]) -> LinearHeads | None:
    """:class:`LinearHeads` for these losses, or ``None`` when a head is not linear in the
    features (see the module docstring)."""
    if len(features) != 1 or features[0].dim() != 2 or features[0].grad_fn is None:
        return None
    feature = features[0]
    nodes = [_product_node(loss, feature) for loss in losses]
    if any(n is None for n in nodes):
        return None
    # The walks of _product_node met no leaf above the products, so each head's leaves are
    # its weight and bias, read off the product node; neither may be a trunk leaf (a tied
    # weight would mix the head's and the trunk's paths) nor another head's.
    found = [_head_parameters(node) for node in nodes if node is not None]
    if any(v is None for task in found for v in task):
        return None
    leaves = cast(list[list[Tensor]], found)
    trunk = trunk_leaf_ids(features)
    ids = [id(v) for task in leaves for v in task]
    if trunk is None or len(set(ids)) != len(ids) or trunk.intersection(ids):
        return None
    weights = [task[0] for task in leaves]
    captured: dict[int, Tensor] = {}
    handles = []
    for k, node in enumerate(nodes):
        assert node is not None

        def keep(grad_outputs: tuple[Tensor, ...], k: int = k) -> None:
            captured[k] = grad_outputs[0]

        handles.append(node.register_prehook(keep))
    flat = [leaf for task in leaves for leaf in task]
    try:
        grads = torch.autograd.grad(torch.stack(list(losses)).sum(), flat, retain_graph=True)
    finally:
        for handle in handles:
            handle.remove()
    head_grads, start = [], 0
    for task in leaves:
        head_grads.append(list(zip(task, grads[start: start + len(task)], strict=True)))
        start += len(task)
    R = torch.cat([captured[k].reshape(captured[k].shape[0], -1) for k in range(len(nodes))],
                  dim=1)
    W = torch.cat([w.detach() for w in weights], dim=0).to(R.dtype)
    owner = torch.cat([torch.full((w.shape[0],), k, dtype=torch.long)
                       for k, w in enumerate(weights)])
    return LinearHeads(R, W, owner, len(nodes), head_grads)
