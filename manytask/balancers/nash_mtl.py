"""Nash-MTL, multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron,
Kawaguchi, Chechik and Fetaya, ICML 2022, Section 3 and Algorithm 1).

The update ``d = sum_k alpha_k g_k`` is the Nash bargaining solution: ``alpha > 0`` solves

    G alpha = 1 / alpha   (elementwise),

so that every task gets ``g_k . d = 1 / alpha_k``. We solve it exactly by Newton's method on a
convex function (:mod:`._fairness`), with no external solver: the reference code's sequence of
convex programs (cvxpy/ECOS, 20 iterations) stops at a loose tolerance and can fail at run time.
Documented fallback: where no solution exists (a non-negative combination of the gradients
vanishes) a ``1e-10`` relative ridge makes it exist; the result is always finite.

Conventions, as the reference code and torchjd: ``alpha`` solves the equation for the Gramian
itself (the reference code divides ``G`` by its Frobenius norm only for conditioning and undoes
it in its constraints; :mod:`._fairness` likewise rescales internally), so the unclipped update
has ``||d||^2 = alpha^T G alpha = K`` whatever the scale of the gradients; it is then clipped to
norm ``max_norm`` (``0`` disables clipping; default 1.0, as the reference code and torchjd).

Clipping and the heads (``head_grad="weighted"`` in :func:`manytask.backward`; by default
heads get their own unweighted gradient and this does not matter). ``clip="weights"``
(default): ``alpha`` itself is scaled, so the heads are weighted by the clipped ``alpha``, as
torchjd (whose aggregator sees only the shared part). ``clip="shared"``: only the shared
update is clipped, and the heads are weighted by the unclipped ``alpha``, as the reference code
and LibMTL, which backpropagate ``sum_k alpha_k L_k`` through everything and then clip the
shared parameters' gradient norm. The shared update is the same under both.
``update_weights_every = n`` recomputes the weights only every n-th step and reuses them in
between, as the reference code's option (only while the same tasks are present; otherwise they
are recomputed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Param
from ._fairness import fair_weights
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting, State, declare
from .registry import register

CLIPS = ("weights", "shared")


@register
class NashMTL(GramianWeighting):
    """The Nash bargaining solution ``G alpha = 1/alpha`` (Navon et al., 2022, Algorithm 1)."""

    name = "nash_mtl"
    params: ClassVar[dict[str, Param]] = {
        "max_norm": Param("float", 1.0, "clip of the update norm (0: none)", low=0.0),
        "update_weights_every": Param("int", 1, "solve every N steps", low=1),
        "clip": Param("choice", "weights", "with max_norm > 0, clip the weights of heads and "
                      "shared part alike (weights) or, as LibMTL and the reference code, weight "
                      "the heads with the unclipped weights (shared)", choices=CLIPS),
    }
    state = declare(
        last_alpha=State(),
        last_present=State(dtype=torch.bool),
        steps=State(dtype=torch.long, per="run"),
    )
    # Per-task state, allocated by setup().
    last_alpha: Tensor
    last_present: Tensor
    steps: Tensor

    def __init__(
        self, max_norm: float = 1.0, update_weights_every: int = 1, clip: str = "weights"
    ) -> None:
        super().__init__()
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.clip = clip

    def alpha(self, gramian: Tensor) -> Tensor:
        """The solution of ``G alpha = 1 / alpha`` (before clipping; 0 for a zero gradient)."""
        return torch.from_numpy(fair_weights(gramian.detach().double().cpu().numpy(), 1.0))

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        gramian = torch.from_numpy(prepared(gramian, self.name))
        idx = self.index(tasks)
        present = torch.zeros(len(self.task_names), dtype=torch.bool)
        present[idx] = True
        reuse = int(self.steps) % self.update_weights_every != 0 and torch.equal(
            present, self.last_present.cpu()
        )
        if reuse:
            alpha = self.last_alpha[idx].cpu()
        else:
            alpha = self.alpha(gramian)
            self.last_alpha.zero_()
            self.last_alpha[idx] = alpha.to(self.last_alpha.device)
            self.last_present.copy_(present.to(self.last_present.device))
        self.steps += 1
        unclipped = alpha
        if self.max_norm > 0:
            norm = math.sqrt(max(float(alpha @ gramian @ alpha), 0.0))
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        heads = checked(unclipped, self.name) if self.clip == "shared" else None
        return Decision(weights=checked(alpha, self.name), head_weights=heads)
