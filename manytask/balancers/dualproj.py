"""DualProj: the mean gradient projected onto the dual cone of the task gradients.

The projection of eq. 11 of Lopez-Paz and Ranzato ("Gradient Episodic Memory for Continual
Learning", NeurIPS 2017), applied to multi-task learning as the aggregator "DualProj" of Quinton
and Rey ("Jacobian Descent for Multi-Objective Optimization", 2024):

    d = pi_C(g0),   C = {x : g_j . x >= 0 for every j},   g0 = (1/K) sum_k g_k,

computed from the Gramian as ``d = J^T v``, ``v = argmin_{v >= 1/K} v^T G v`` (the dual of the
projection, Proposition 1 of Quinton and Rey), by the exact QP solver of :mod:`._qp`.

Convention: weights of the *mean*, as torchjd: when the mean gradient conflicts with no task
(``G 1 >= 0``), the update is the mean gradient itself (weights ``1/K``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ._gramian import checked
from .base import Decision, GramianWeighting
from .registry import register
from .upgrad import dual_cone_weights


@register
class DualProj(GramianWeighting):
    """Projection of the mean gradient onto the dual cone (GEM eq. 11; Quinton and Rey, 2024)."""

    name = "dualproj"

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        k = len(tasks)
        v = dual_cone_weights(gramian, np.full(k, 1.0 / k), self.name)
        return Decision(weights=checked(v, self.name))
