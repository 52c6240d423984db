"""Models for tasks with a sequential dependence (impression -> click -> conversion).

* ESMM: Ma, Zhao, Huang, Wang, Hu, Zhu and Gai, "Entire Space Multi-Task Model: An Effective
  Approach for Estimating Post-Click Conversion Rate", SIGIR 2018, Section 2.2 (eqs. 1-3):
  ``pCTCVR = pCTR * pCVR``, both towers reading a shared embedding; the losses are the CTR loss
  on clicks and the CTCVR loss on "click and convert", both over all impressions, so pCVR is
  learnt on the entire space without a loss of its own.
* AITM: Xi, Chen, Liu, Zhang, Zhu, Gu, Zhou and Xiao, "Modeling the Sequential Dependence among
  Audience Multi-step Conversions with Multi-task Learning in Targeted Display Advertising",
  KDD 2021, Section 3: task towers ``q_t``; for ``t >= 2`` an Adaptive Information Transfer
  module ``z_t = sum_{u in {p_{t-1}, q_t}} w_u h_3(u)`` with
  ``w_u = softmax_u(<h_1(u), h_2(u)> / sqrt(d))`` and ``p_{t-1} = transfer_{t-1}(z_{t-1})``
  (``z_1 = q_1``); and the behavioural expectation calibrator
  ``alpha * sum_{t >= 2} mean(max(y_t - y_{t-1}, 0))`` on the predicted probabilities.

Both are :class:`MultiTaskModel` s whose shared part is the input layer (plus an optional
shared MLP); the towers are heads, and a later task's head reads earlier towers, which only
affects head parameters. Outputs are logits, as :meth:`manytask.Task.binary` expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks import Task
from .base import Features, MultiTaskModel, mlp
from .experts import check_sizes
from .per_task import resolve_input


def logit_of_product(a: Tensor, b: Tensor) -> Tensor:
    """``logit(sigmoid(a) * sigmoid(b))``, computed in log space (stable for large logits)."""
    log_p = F.logsigmoid(a) + F.logsigmoid(b)
    # log(1 - p) = log(-expm1(log p)); clamp keeps p = 1 (both logits +inf) finite.
    return log_p - torch.log(-torch.expm1(log_p.clamp_max(-1e-7)))


def _trunk(
    owner: str, in_features: int | None, input_layer: nn.Module | None, shared_hidden: Sequence[int]
) -> tuple[nn.Module, int]:
    layer, width = resolve_input(owner, in_features, input_layer)
    check_sizes(owner, "shared_hidden", shared_hidden, allow_empty=True)
    if not shared_hidden:
        return layer, width
    return nn.Sequential(layer, mlp([width, *shared_hidden])), shared_hidden[-1]


def _binary_tasks(owner: str, tasks: Sequence[Task], n: int | None) -> None:
    if n is not None and len(tasks) != n:
        raise ValueError(f"{owner}: needs exactly {n} tasks, got {len(tasks)}")
    if len(tasks) < 2:
        raise ValueError(f"{owner}: needs at least 2 tasks in funnel order, got {len(tasks)}")
    for t in tasks:
        if t.kind != "binary":
            raise ValueError(f"{owner}: task {t.name!r} must be binary, got {t.kind}")


class ESMM(MultiTaskModel):
    """Entire Space Multi-task Model (Ma et al., 2018).

    ``tasks`` are ``(ctr_task, ctcvr_task)``, both binary: the first is trained on clicks, the
    second on "clicked and converted". Output of the second is ``logit(pCTR * pCVR)``;
    :meth:`cvr` gives the post-click conversion rate ``pCVR`` itself.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        tower_hidden: Sequence[int] = (64, 32),
        shared_hidden: Sequence[int] = (),
        input_layer: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        _binary_tasks("ESMM", tasks, 2)
        check_sizes("ESMM", "tower_hidden", tower_hidden, allow_empty=True)
        trunk, width = _trunk("ESMM", in_features, input_layer, shared_hidden)
        self.ctr_task, self.ctcvr_task = tasks[0].name, tasks[1].name
        heads = {
            t.name: mlp([width, *tower_hidden, 1], dropout=dropout, last_activation=False)
            for t in tasks
        }
        super().__init__(trunk, heads)

    def heads_forward(self, features: Features) -> dict[str, Tensor]:
        ctr = self.heads[self.ctr_task](features)
        cvr = self.heads[self.ctcvr_task](features)
        return {self.ctr_task: ctr, self.ctcvr_task: logit_of_product(ctr, cvr)}

    def cvr(self, x: object) -> Tensor:
        """``pCVR = p(conversion | click, x)`` as a probability."""
        return torch.sigmoid(self.heads[self.ctcvr_task](self.features(x)))


class AITM(MultiTaskModel):
    """Adaptive Information Transfer Multi-task model (Xi et al., 2021).

    ``tasks`` are binary and in funnel order (e.g. click, purchase, ...). ``last_attention``
    holds, per task from the second on, the ``(batch, 2)`` weights given to the information
    transferred from the previous task and to the task's own tower.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int | None = None,
        *,
        tower_hidden: Sequence[int] = (64, 32),
        shared_hidden: Sequence[int] = (),
        input_layer: nn.Module | None = None,
        calibration_weight: float = 0.6,
        dropout: float = 0.0,
    ) -> None:
        _binary_tasks("AITM", tasks, None)
        check_sizes("AITM", "tower_hidden", tower_hidden)
        if not calibration_weight >= 0:
            raise ValueError(f"AITM: calibration_weight must be >= 0, got {calibration_weight!r}")
        trunk, width = _trunk("AITM", in_features, input_layer, shared_hidden)
        d = tower_hidden[-1]
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"AITM: task names must be unique, got {names}")
        heads = {n: mlp([width, *tower_hidden], dropout=dropout) for n in names}
        super().__init__(trunk, heads)
        self.order = tuple(names)
        self.dim = d
        self.calibration_weight = calibration_weight
        self.outputs = nn.ModuleDict({n: nn.Linear(d, 1) for n in names})
        # Transfer from task t-1 to t, and the attention's three projections for each t >= 2.
        self.transfer = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(d, d), nn.ReLU()) for n in names[1:]}
        )
        self.h1 = nn.ModuleDict({n: nn.Linear(d, d) for n in names[1:]})
        self.h2 = nn.ModuleDict({n: nn.Linear(d, d) for n in names[1:]})
        self.h3 = nn.ModuleDict({n: nn.Linear(d, d) for n in names[1:]})
        self.last_attention: dict[str, Tensor] = {}

    def heads_forward(self, features: Features) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        z_prev: Tensor | None = None
        for t in self.order:
            q = self.heads[t](features)
            if z_prev is None:
                z = q
            else:
                u = torch.stack([self.transfer[t](z_prev), q], dim=1)  # (batch, 2, d)
                score = (self.h1[t](u) * self.h2[t](u)).sum(-1) / math.sqrt(self.dim)
                w = torch.softmax(score, dim=1)
                self.last_attention[t] = w.detach()
                z = (w.unsqueeze(-1) * self.h3[t](u)).sum(1)
            out[t] = self.outputs[t](z)
            z_prev = z
        return out

    def calibration_penalty(self, outputs: dict[str, Tensor]) -> Tensor:
        """``alpha * sum_t mean(max(p_t - p_{t-1}, 0))``: a later step may not be likelier."""
        probs = [torch.sigmoid(outputs[t]).reshape(-1) for t in self.order]
        terms = [F.relu(b - a).mean() for a, b in pairwise(probs)]
        return self.calibration_weight * torch.stack(terms).sum()
