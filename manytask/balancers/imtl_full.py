"""IMTL, impartial multi-task learning in full (Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang,
"Towards Impartial Multi-task Learning", ICLR 2021, Section 3 and Algorithm 1): IMTL-L's loss
scales combined with IMTL-G's gradient weights.

1. Loss balance (IMTL-L): each task has a learnable scale ``s_k``; the scaled loss is
   ``e^{s_k} L_k`` and the scales minimise ``sum_k (e^{s_k} L_k - s_k)``.
2. Gradient balance (IMTL-G) on the gradients of the *scaled* losses, ``g'_k = e^{s_k} g_k``,
   whose Gramian is ``G' = D G D`` with ``D = diag(e^{s_k})``: the weights ``a`` (summing to 1)
   give an update with equal projections on every ``g'_k / ||g'_k||``
   (:func:`.imtl.imtl_g_weights`).

The shared part receives ``sum_k a_k g'_k = sum_k (a_k e^{s_k}) g_k``, so the reported weights,
over the original gradients, are ``w_k = a_k e^{s_k}``. (The direction does not depend on
``s``: IMTL-G is invariant to the scale of each gradient, as the paper notes; ``s`` sets the
update's length and, through ``head_grad="weighted"``, the heads' gradients.)

How it runs through the engine: it is a Gramian weighting (a gradient-level method), so the
shared update is ``sum_k w_k g_k`` as above. The scales' own gradient,
``d/ds_k (e^{s_k} L_k - s_k) = e^{s_k} L_k - 1``, does not involve the model, so
:meth:`IMTL.decide` accumulates it into ``s.grad`` itself (a backward of the detached scale
objective onto ``s`` only); one optimiser step then moves the model and the scales together. As
with ``imtl_l``, call ``setup(task_names)`` before building the optimiser and give it
``balancer.parameters()`` (the Trainer does both). Heads follow the engine's ``head_grad``:
their own unweighted gradient by default (the paper scales it by ``e^{s_k}``; use
``head_grad="weighted"`` for a scaled head gradient, ``a_k e^{s_k}``). An absent task's scale
gets no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .imtl import imtl_g_weights
from .imtl_l import LogScales
from .registry import register


@register
class IMTL(LogScales, GramianWeighting):
    """IMTL-G weights on the IMTL-L-scaled losses (Liu et al., 2021, Algorithm 1)."""

    name = "imtl"

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        params = [self.log_scales[i] for i in self.index(tasks).tolist()]
        s = torch.stack(params)
        # Loss balance: the gradient of sum_k (e^{s_k} L_k - s_k) w.r.t. s only.
        scale_objective = (torch.exp(s) * losses.detach().to(s.dtype) - s).sum()
        torch.autograd.backward(scale_objective, inputs=params)
        e = torch.exp(s.detach().double()).cpu()
        g = torch.from_numpy(prepared(gramian, self.name))
        scaled = e[:, None] * g * e[None, :]  # D G D
        return Decision(weights=checked(imtl_g_weights(scaled) * e, self.name))
