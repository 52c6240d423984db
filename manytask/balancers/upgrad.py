"""UPGrad, unconflicting projection of gradients (Quinton and Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, Section 3: the UPGrad aggregator, and Proposition 1).

Each task gradient is projected onto the dual cone of all of them,
``C = {x : g_j . x >= 0 for every j}``, and the projections are averaged:

    A(J) = (1/K) sum_i pi_C(g_i).

By Proposition 1 of the paper, ``pi_C(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v``, so
each projection is a small QP on the Gramian. The K QPs share ``G`` and are solved together,
exactly, by batched block principal pivoting (:mod:`._dual_cone`, with the active-set solver of
:mod:`._qp` as the fallback); no regularisation of ``G``, unlike torchjd's default projector,
which adds 1e-4 to the diagonal of the normalised Gramian.

Convention: the weights are those of the *mean* (``u_i = e_i / K``), as in the paper and torchjd:
when no pair of gradients conflicts, the update is exactly the mean gradient (weights ``1/K``).
Multiply by K for the scale of the summed loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ._dual_cone import dual_cone_solve
from ._gramian import checked, prepared
from .base import Decision, GramianWeighting
from .registry import register


def dual_cone_weights(gramian: Tensor, u: np.ndarray, method: str = "upgrad") -> np.ndarray:
    """``v = argmin_{v >= u} v^T G v``: ``J^T v`` projects ``J^T u`` onto the dual cone.

    ``u`` may be one vector (K,) or a batch of them (B, K), solved together. ``G`` is made
    PSD first (:func:`._gramian.prepared`; ``method`` names the caller in its errors).
    """
    g = prepared(gramian, method)
    u = np.asarray(u, dtype=np.float64)
    v = dual_cone_solve(g, u.reshape(-1, g.shape[0]))
    return v.reshape(u.shape)


@register
class UPGrad(GramianWeighting):
    """Mean of the projections of each gradient onto the dual cone (Quinton and Rey, 2024)."""

    name = "upgrad"

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        # Row i is u_i = e_i / K; the K projections are solved in one batch.
        v = dual_cone_weights(gramian, np.eye(k) / k)
        return Decision(weights=checked(v.sum(axis=0), self.name))
