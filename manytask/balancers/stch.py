"""STCH: smooth Tchebycheff scalarisation.

Lin, Zhang, Yang, Liu, Wang and Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024, Section 3 (the smooth Tchebycheff scalarisation
``g_mu(x | lambda)``): with preferences ``w_k``, ideal point ``z_k`` and smoothing
``mu > 0``, minimise ``mu * log sum_k exp(w_k (f_k - z_k) / mu)``, a smooth upper bound of the
Tchebycheff scalarisation ``max_k w_k (f_k - z_k)`` that it approaches as ``mu -> 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting, State, declare
from .registry import number_map, register

Ideal = Literal["zero", "running_min"]


@register
class STCH(LossWeighting):
    """Smooth Tchebycheff scalarisation of the task losses.

    Objectives ``f_k``: the losses, divided by their warm-up mean when ``warmup_steps > 0``,
    and with ``log_losses=True`` replaced by ``log(f_k + eps)``. The paper's multi-task code
    (Xi-L/STCH, LibMTL-based) uses ``warmup_steps`` > 0 and ``log_losses=True``; the defaults
    give the paper's definition on the raw losses.

    * ``warmup_steps``: during the first ``warmup_steps`` calls the objective is
      ``sum_k log(L_k + eps)`` (as in the paper's code) and each task's losses are averaged;
      afterwards ``f_k = L_k / mean_k``, which puts tasks of different scales on one scale
      (the code's "nadir vector"). The code averages over the last warm-up epoch only; here
      the mean runs over all the warm-up calls where the task was present.
    * ``ideal``: the point ``z`` subtracted from ``f``: ``"zero"`` (the code's choice) or
      ``"running_min"``, each task's smallest ``f_k`` seen so far, this step included (an
      estimate of the ideal point of the paper, which assumes it known).
    * ``preference``: ``w_k`` per task name (default 1 for every task, as the code).

    Reported weights are the gradient coefficients ``d objective / d L_k`` =
    ``softmax(x / mu)_k * w_k * df_k/dL_k`` with ``x_k = w_k (f_k - z_k)``; with unit
    preferences and raw losses they sum to 1 (the code multiplies the objective by K; we do
    not). The log-sum-exp is evaluated stably (``torch.logsumexp``), so any ``mu > 0`` is safe.
    """

    name = "stch"
    params: ClassVar[dict[str, Param]] = {
        "mu": Param("float", 1.0, "smoothing temperature", low=0.0, low_open=True),
        "warmup_steps": Param("int", 0, "steps of equal weighting that set the nadir", low=0),
        "ideal": Param("choice", "zero", "ideal point", choices=("zero", "running_min")),
        "log_losses": Param("bool", False, "use log losses"),
        "preference": Param("any", None, "{task: preference weight}", nullable=True,
                            check=number_map(low=0.0, low_open=True)),
        "eps": Param("float", 1e-8, "floor inside the logarithm", low=0.0, low_open=True),
    }
    state = declare(
        warmup_sum=State(),
        warmup_count=State(dtype=torch.long),
        ideal_point=State(fill=math.inf),
        step=State(dtype=torch.long, per="run"),
    )

    warmup_sum: Tensor
    warmup_count: Tensor
    ideal_point: Tensor
    step: Tensor

    def __init__(
        self,
        mu: float = 1.0,
        warmup_steps: int = 0,
        ideal: Ideal = "zero",
        log_losses: bool = False,
        preference: Mapping[str, float] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.mu = mu
        self.warmup_steps = warmup_steps
        self.ideal = ideal
        self.log_losses = log_losses
        self.preference = dict(preference or {})
        self.eps = eps

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        unknown = sorted(set(self.preference) - set(self.task_names))
        if unknown:
            raise ValueError(f"stch: preference given for unknown task(s) {unknown}")

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        idx = self.index(tasks).to(self.step.device)
        step = int(self.step) + 1
        self.step.fill_(step)
        if step <= self.warmup_steps:
            with torch.no_grad():
                self.warmup_sum[idx] += losses.detach().double().to(self.warmup_sum.device)
                self.warmup_count[idx] += 1
            objective = torch.log(losses + self.eps).sum()
            weights = 1.0 / (losses.detach().double() + self.eps)
            return Decision(weights, objective)

        scale = torch.ones(len(tasks), dtype=torch.float64, device=losses.device)
        if self.warmup_steps > 0:
            counts = self.warmup_count[idx].to(losses.device)
            sums = self.warmup_sum[idx].to(losses.device)
            # A task absent from the whole warm-up has no mean: it keeps its raw scale.
            seen = counts > 0
            scale = torch.where(seen, sums / counts.clamp_min(1), scale)
            scale = scale.clamp_min(self.eps)  # a task with zero warm-up loss: avoid 1/0
        f = losses / scale.to(losses.dtype)
        df = 1.0 / scale  # d f_k / d L_k, float64
        if self.log_losses:
            df = df / (f.detach().double() + self.eps)
            f = torch.log(f + self.eps)

        pref = torch.tensor(
            [float(self.preference.get(t, 1.0)) for t in tasks],
            dtype=torch.float64, device=losses.device,
        )
        if self.ideal == "running_min":
            with torch.no_grad():
                current = f.detach().double().to(self.ideal_point.device)
                self.ideal_point[idx] = torch.minimum(self.ideal_point[idx], current)
            z = self.ideal_point[idx].to(device=losses.device)
        else:
            z = torch.zeros_like(pref)
        x = pref.to(losses.dtype) * (f - z.to(losses.dtype))
        objective = self.mu * torch.logsumexp(x / self.mu, dim=0)
        with torch.no_grad():
            soft = torch.softmax(x.detach().double() / self.mu, dim=0)
            weights = soft * pref * df
        return Decision(weights, objective)
