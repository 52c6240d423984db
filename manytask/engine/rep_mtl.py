"""Rep-MTL: regularising representation-level task saliency (Wang, Li and Xu, "Rep-MTL:
Unleashing the Power of Representation-level Task Saliency for Multi-Task Learning", ICCV 2025,
Section 3: task saliency, task-specific saliency regulation (TSR) and cross-task saliency
alignment (CSA)).

The *task saliency* of task ``k`` is the gradient of its loss w.r.t. the shared representation,
``S_k = dL_k / dz``, per sample. Rep-MTL adds two penalties on these saliencies to the training
objective of any method (the paper pairs it with plain equal weighting):

* **TSR, an entropy penalty.** At each sample ``b`` and position ``p`` the saliency magnitudes
  ``a_kbp = |S_k|`` (summed over the channel axis, dim 1, for features of shape (B, C, ...);
  each entry of dim 1 is a position for features of shape (B, C)) are normalised over the tasks,
  ``P_kbp = a_kbp / sum_j a_jbp``, and the mean entropy ``-sum_k P_kbp log P_kbp`` over samples
  and positions is penalised: each position is pushed to serve its tasks distinctly, keeping
  task-specific patterns instead of a blurred mixture.
* **CSA, a sample-wise cross-task alignment.** Each sample's saliency vector of each task,
  ``s_kb = S_k[b] / ||S_k[b]||``, is aligned with the same sample's saliency of every other task
  by an InfoNCE loss (the other samples of the batch are the negatives, temperature ``tau``),
  averaged over ordered task pairs and samples: it promotes complementary sharing of the
  representation, sample by sample.

The regulariser is ``tsr_weight * TSR + csa_weight * CSA``. It is built by double
backpropagation (``create_graph=True``), so it trains the shared part and the heads; costs: K
head backwards with graph, one extra backward through them, and ``O(K^2 B^2)`` similarities for
CSA. This is our reading of the mechanism as the paper describes it; the normalisation choices
(task-wise L1 for TSR, cosine InfoNCE for CSA) are stated above.

A part of the pipeline of :func:`manytask.backward`: ``backward(losses, method,
features=..., parts=[RepMTL()])`` backpropagates the regulariser once the losses are checked,
before the method decides, with any method. :func:`rep_mtl_backward` is that call;
:func:`rep_mtl_regularizer` gives the regulariser to add to your own objective (backpropagate it
with ``retain_graph=True`` *before* the losses' own backward).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..balancers.base import Balancer
from ..balancers.registry import check_number
from .backward import BackwardResult, backward
from .gradients import Features, feature_tensors
from .parts import Part

_EPS = 1e-12


def task_saliency(losses: Mapping[str, Tensor], feature: Tensor) -> Tensor:
    """``dL_k/dz`` for every task, stacked (K, *feature.shape), differentiable (create_graph)."""
    rows = []
    for task, loss in losses.items():
        (g,) = torch.autograd.grad(loss, feature, create_graph=True, allow_unused=True)
        if g is None:
            raise ValueError(f"rep_mtl: the loss of task {task!r} does not depend on the features")
        rows.append(g)
    return torch.stack(rows)


def saliency_entropy(saliency: Tensor) -> Tensor:
    """TSR: mean over samples and positions of the entropy of the task-normalised magnitudes."""
    mag = saliency.abs()
    if mag.dim() > 3:  # (K, B, C, ...): sum over channels, positions are the rest
        mag = mag.sum(dim=2)
    mag = mag.reshape(mag.shape[0], -1)
    share = mag / mag.sum(dim=0, keepdim=True).clamp_min(_EPS)
    return -(share * torch.log(share.clamp_min(_EPS))).sum(dim=0).mean()


def saliency_alignment(saliency: Tensor, temperature: float) -> Tensor:
    """CSA: InfoNCE between tasks' per-sample saliencies (same sample positive), mean over
    ordered task pairs and samples; 0 for fewer than two tasks."""
    k, b = saliency.shape[0], saliency.shape[1]
    if k < 2:
        return saliency.sum() * 0.0
    s = saliency.reshape(k, b, -1)
    s = s / s.norm(dim=2, keepdim=True).clamp_min(_EPS)
    logits = torch.einsum("ibd,jcd->ijbc", s, s) / temperature  # (K, K, B, B)
    log_prob = torch.log_softmax(logits, dim=3).diagonal(dim1=2, dim2=3)  # (K, K, B)
    off = ~torch.eye(k, dtype=torch.bool, device=s.device)
    return -log_prob[off].mean()


def rep_mtl_regularizer(
    losses: Mapping[str, Tensor],
    features: Features,
    *,
    tsr_weight: float = 1.0,
    csa_weight: float = 1.0,
    temperature: float = 0.1,
) -> Tensor:
    """``tsr_weight * TSR + csa_weight * CSA`` over every feature tensor (summed)."""
    check_number("rep_mtl", "tsr_weight", tsr_weight, low=0.0)
    check_number("rep_mtl", "csa_weight", csa_weight, low=0.0)
    check_number("rep_mtl", "temperature", temperature, low=0.0, low_inclusive=False)
    if not losses:
        raise ValueError("rep_mtl: no task loss given")
    feats = feature_tensors(features)
    if not feats:
        raise ValueError("rep_mtl: features holds no tensor that requires grad")
    total: Tensor | None = None
    for feature in feats:
        if feature.dim() < 2:
            shape = tuple(feature.shape)
            raise ValueError(f"rep_mtl: features need a batch and a feature axis, got {shape}")
        sal = task_saliency(losses, feature)
        term = tsr_weight * saliency_entropy(sal) + csa_weight * saliency_alignment(
            sal, temperature
        )
        total = term if total is None else total + term
    assert total is not None
    return total


class RepMTL(Part):
    """The pipeline part: backpropagates :func:`rep_mtl_regularizer` of the checked losses
    (keeping the forward graph for the method's own backward)."""

    def __init__(
        self, tsr_weight: float = 1.0, csa_weight: float = 1.0, temperature: float = 0.1
    ) -> None:
        check_number("rep_mtl", "tsr_weight", tsr_weight, low=0.0)
        check_number("rep_mtl", "csa_weight", csa_weight, low=0.0)
        check_number("rep_mtl", "temperature", temperature, low=0.0, low_inclusive=False)
        self.tsr_weight, self.csa_weight, self.temperature = tsr_weight, csa_weight, temperature

    def on_losses(self, losses: Mapping[str, Tensor], features: Features | None) -> None:
        if features is None:
            raise ValueError("rep_mtl: pass features= (the shared representation)")
        reg = rep_mtl_regularizer(
            losses, features, tsr_weight=self.tsr_weight, csa_weight=self.csa_weight,
            temperature=self.temperature,
        )
        reg.backward(retain_graph=True)


def rep_mtl_backward(
    losses: Mapping[str, Tensor],
    method: Balancer,
    *,
    features: Features,
    tsr_weight: float = 1.0,
    csa_weight: float = 1.0,
    temperature: float = 0.1,
    shared_params: Iterable[Tensor] | None = None,
    **backward_kwargs: Any,
) -> BackwardResult:
    """``manytask.backward(losses, method, ..., parts=[RepMTL(...)])``: the regulariser, then
    the method's decision. Gradients add up in ``.grad``."""
    part = RepMTL(tsr_weight, csa_weight, temperature)
    params = None if shared_params is None else list(shared_params)
    return backward(losses, method, features=features, shared_params=params,
                    parts=[part], **backward_kwargs)
