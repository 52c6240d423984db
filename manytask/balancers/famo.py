"""FAMO: fast adaptive multitask optimization.

Liu, Feng, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
Algorithm 1. With logits ``xi`` (start at 0), ``z = softmax(xi)`` and ``D_k = L_k - b_k + eps``:

* model step: descend ``c * sum_k z_k log D_k`` with ``c = (sum_k z_k / D_k)^{-1}`` held
  constant, i.e. the gradient ``sum_k w_k grad L_k`` with ``w_k = c z_k / D_k``;
* logit step: with ``delta_k = log D_k(before) - log D_k(after)`` the log-loss decrease over
  the model step, ``xi <- xi - lr * (J_softmax(xi)^T delta + weight_decay * xi)``, so tasks that
  improved less than the ``z``-weighted average gain weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..registry import Param
from .base import Decision, LossWeighting, State, declare
from .registry import number_map, register

Optimizer = Literal["adam", "sgd"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as the reference


@register
class FAMO(LossWeighting):
    """FAMO (Algorithm 1 of the paper), with its learning rate and weight decay on the logits.

    **When the logits move.** The paper measures ``delta`` on the same batch before and after
    the model step, which costs an extra forward pass. At this interface the losses of the
    next call are the only ones available for free, so ``delta`` is the change from the
    previous call's losses to this call's (a new batch, hence a noisier estimate). The logits
    are updated at the start of each call, before this step's weights are computed; a call
    gives the same result as the reference ``update(new_losses)`` followed by the next
    ``get_weighted_loss``. A task's logit moves only if the task was present in both calls,
    and only when at least two tasks were (the softmax of a single logit is constant).

    **Optimizer of the logits.** ``optimizer="adam"`` (default) is what the official code and
    LibMTL run: ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8) on the gradient
    ``J^T delta + weight_decay * xi``, kept per task so absent tasks keep their moments.
    ``optimizer="sgd"`` is the plain gradient step written in Algorithm 1. Defaults
    ``lr=0.025`` (the paper's) and ``weight_decay=1e-3`` (the paper's appendix and LibMTL; the
    official code uses 1e-5 for some benchmarks).

    **Logs of small losses.** ``eps`` (default ``1e-8``, as the reference) keeps ``log D`` and
    the weights finite when a loss is 0; a loss below its ``min_losses`` entry (the paper's
    optional lower bound ``b_k``, default 0) is clamped to it and gets no gradient.

    **Convention.** Reported weights ``w_k = c z_k / D_k`` are the gradient coefficients of the
    objective and sum to 1 over the present tasks (the update is a convex combination of the
    task gradients, as in the paper). ``z`` is the softmax of the present tasks' logits.
    The logits are buffers updated by FAMO itself: do not give them to the model's optimizer.
    """

    name = "famo"
    params: ClassVar[dict[str, Param]] = {
        "lr": Param("float", 0.025, "step size of the logits", low=0.0),
        "weight_decay": Param("float", 1e-3, "decay of the logits", low=0.0),
        "optimizer": Param("choice", "adam", "optimizer of the logits", choices=("adam", "sgd")),
        "eps": Param("float", 1e-8, "floor inside the logarithm", low=0.0, low_open=True),
        "min_losses": Param("any", None, "{task: lower bound b_k of its loss}", nullable=True,
                            check=number_map()),
    }
    state = declare(
        logits=State(),
        prev_log_loss=State(),
        last_step=State(fill=-1, dtype=torch.long),
        adam_m=State(),
        adam_v=State(),
        adam_t=State(dtype=torch.long),
        step=State(dtype=torch.long, per="run"),
    )

    logits: Tensor
    prev_log_loss: Tensor
    last_step: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_t: Tensor
    step: Tensor
    lower: Tensor

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        optimizer: Optimizer = "adam",
        eps: float = 1e-8,
        min_losses: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.eps = eps
        self.min_losses = dict(min_losses or {})

    def setup(self, task_names: Sequence[str]) -> None:
        first = not self.task_names
        super().setup(task_names)
        unknown = sorted(set(self.min_losses) - set(self.task_names))
        if unknown:
            raise ValueError(f"famo: min_losses given for unknown task(s) {unknown}")
        if not first:
            return
        bounds = [float(self.min_losses.get(t, 0.0)) for t in self.task_names]
        self.register_buffer("lower", torch.tensor(bounds, dtype=torch.float64), persistent=False)

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        idx = self.index(tasks).to(self.logits.device)
        step = int(self.step) + 1
        shift = self.lower[idx].to(device=losses.device, dtype=losses.dtype)
        d = (losses - shift).clamp_min(0.0) + self.eps
        log_d = torch.log(d.detach().double()).to(self.logits.device)

        with torch.no_grad():
            seen = self.last_step[idx] == step - 1  # present at the previous call too
            if int(seen.sum()) >= 2:  # one logit alone has no softmax to move
                self._update_logits(idx[seen], self.prev_log_loss[idx[seen]] - log_d[seen])
            self.prev_log_loss[idx] = log_d
            self.last_step[idx] = step
            self.step.fill_(step)

            z = torch.softmax(self.logits[idx], dim=0).to(losses.device)
            d64 = d.detach().double()
            coef = z / (z / d64).sum()  # c z_k, the coefficients of log D_k
            # A loss clamped at its bound gets no gradient: report the weight it acts with.
            weights = torch.where(losses.detach() >= shift, coef / d64, 0.0)
        objective = (coef.to(losses.dtype) * torch.log(d)).sum()
        return Decision(weights, objective)

    def _update_logits(self, j: Tensor, delta: Tensor) -> None:
        xi = self.logits[j]
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - (z * delta).sum())  # J_softmax^T delta (the Jacobian is symmetric)
        grad = grad + self.weight_decay * xi
        if self.optimizer == "sgd":
            self.logits[j] = xi - self.lr * grad
            return
        t = self.adam_t[j] + 1
        m = _BETA1 * self.adam_m[j] + (1 - _BETA1) * grad
        v = _BETA2 * self.adam_v[j] + (1 - _BETA2) * grad * grad
        m_hat = m / (1 - _BETA1 ** t.double())
        v_hat = v / (1 - _BETA2 ** t.double())
        self.logits[j] = xi - self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
        self.adam_m[j], self.adam_v[j], self.adam_t[j] = m, v, t
