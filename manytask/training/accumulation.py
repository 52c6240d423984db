"""The Trainer's gradient accumulation that frees each micro-batch's graph
(``accumulate_memory="free"``, the default; see :mod:`manytask.engine.accumulate`).

Pass 1, one micro-batch at a time: the forward (its random state saved first), the losses,
and what the decision needs (:class:`~manytask.engine.accumulate.Accumulation`: the loss
values; in exact mode the per-task gradients w.r.t. the shared parameters and heads; in
feature mode the per-task feature gradients); then the graph is dropped. The engine decides
once on the surrogate losses. Pass 2, for a loss-level decision or feature mode only: each
micro-batch's forward again with the same random draws, and the decided combination
backpropagated through it (one extra forward per micro-batch, as activation checkpointing
costs). Exact mode needs no second pass: its update is written at the parameters. The random
state and the model's buffers (batch-norm statistics) end as after pass 1, as if each
micro-batch had been run once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..engine.accumulate import Accumulation, Kind, NotSeparable
from ..engine.backward import GradientOverflowError, NonFiniteLossError
from ..engine.collectives import fsdp_managed
from ..engine.gradients import feature_tensors
from ..tasks import task_losses
from .devices import autocast
from .evaluation import to_device
from .support import RngState, mean_auxiliary, rng_state, set_rng_state

Batch = tuple[Any, Mapping[str, Tensor]]
Memory = Literal["free", "graphs"]
MEMORY: tuple[Memory, ...] = ("free", "graphs")


def check_memory(value: str) -> None:
    """``accumulate_memory`` is one of :data:`MEMORY` (a one-line error naming it if not)."""
    if value not in MEMORY:
        raise ValueError(f"accumulate_memory must be one of {list(MEMORY)}, got {value!r}")


def kind_for(balancer: Any, mode: str, cosine_due: bool) -> Kind:
    """What pass 1 collects: loss values only when the step's decision needs no task
    gradient (a loss weighting, or a schedule reusing weights) and no cosine is logged."""
    schedule = balancer.schedule
    reuse = schedule is not None and not schedule.due()
    if not cosine_due and (balancer.requires == "losses" or reuse):
        return "losses"
    return "exact" if mode == "exact" else "feature"


@dataclass
class FreeStep:
    """One optimiser step over ``micro`` by the two passes (see the module)."""

    trainer: Any
    micro: Sequence[Batch]
    kind: Kind
    scale: float
    acc: Accumulation = field(init=False)
    states: list[RngState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acc = Accumulation(self.kind, self.trainer._shared)

    def forward(self, x: Any, targets: Any) -> tuple[dict[str, Tensor], Any, dict[str, Tensor]]:
        t = self.trainer
        with autocast(t.device, t.precision):
            outputs, features = t.model(x, return_features=True)
            losses = task_losses(t.tasks, outputs, targets)
        aux = t.model.auxiliary_losses()  # now: an adapter's next forward needs it
        return losses, features, aux

    def collect(self) -> tuple[dict[str, Tensor], Any, dict[str, int]]:
        """Pass 1; returns the surrogate ``(losses, features, counts)`` for the backward.
        Raises :class:`~manytask.engine.accumulate.NotSeparable` (a model with FSDP-sharded
        parameters, or one whose heads cannot be separated from the trunk) with the random
        state and buffers of the step's start restored: the caller then keeps the graphs."""
        t = self.trainer
        if any(fsdp_managed(p) for p in t.model.parameters()):
            # the surrogate reads the shared parameters outside any forward, where FSDP holds
            # only this rank's shards, and FSDP expects each forward's backward
            raise NotSeparable("FSDP-sharded parameters")
        start = [b.detach().clone() for b in t.model.buffers()] if self.kind != "losses" else []
        try:
            return self.first_pass()
        except NotSeparable:
            set_rng_state(self.states[0], t.device)
            restore(t.model, start)
            t.optimizer.zero_grad(set_to_none=True)  # an auxiliary loss's gradient
            raise

    def first_pass(self) -> tuple[dict[str, Tensor], Any, dict[str, int]]:
        t = self.trainer
        n = len(self.micro)
        auxes = []
        grad = torch.enable_grad() if self.kind != "losses" else torch.no_grad()
        for x, targets in self.micro:
            x, targets = to_device(x, t.device), to_device(targets, t.device)
            self.states.append(rng_state(t.device))
            with grad:
                losses, features, aux = self.forward(x, targets)
            counts = {task.name: int(task.labelled(targets[task.name]).sum())
                      for task in t.tasks if task.name in losses}
            # fp16: the scaler's own product (it also starts the scaler's bookkeeping)
            scaled = {k: t.scaler.scale(v) for k, v in losses.items()} \
                if t.scaler is not None else losses
            self.acc.add(scaled, features, counts)
            auxes.append(aux)
            check_aux(aux, t.step)
            if aux and self.kind == "exact":  # no second pass: its graph is this one
                backward_aux(aux, self.scale / n)
            del losses, features, scaled, aux  # the graph goes with them
        t._last_x, t._last_targets = x, targets  # the gate report reads the last batch
        t._last_aux = {k: v.detach() for k, v in mean_auxiliary(auxes, t.aux_names).items()}
        self.buffers = [b.detach().clone() for b in t.model.buffers()] \
            if self.kind != "exact" else []
        if self.kind != "losses" and not self.acc.finite():
            if self.scale != 1.0:
                raise GradientOverflowError(f"scaled gradients overflowed (scale {self.scale:g})")
            raise FloatingPointError(f"non-finite per-task gradient at step {t.step}; no weight "
                                     "was updated")
        return self.acc.surrogate([task.name for task in t.tasks])

    def replay(self) -> None:
        """Pass 2 (loss level, feature mode): push the decision into each micro-batch."""
        if self.kind == "exact":
            return
        t = self.trainer
        n = len(self.micro)
        after = rng_state(t.device)  # pass 1's draws and the method's own (PCGrad's order)
        for m, (x, targets) in enumerate(self.micro):
            x, targets = to_device(x, t.device), to_device(targets, t.device)
            set_rng_state(self.states[m], t.device)
            losses, features, aux = self.forward(x, targets)
            roots: list[Tensor] = []
            grads: list[Tensor] = []
            if self.kind == "losses":
                weights = self.acc.loss_weights(m)
                terms = [losses[k] * (w * self.scale) for k, w in weights.items()]
                if terms:
                    roots.append(torch.stack(terms).sum())
                    grads.append(torch.ones_like(roots[-1]))
            else:
                feats = feature_tensors(features)
                roots += feats
                grads += self.acc.feature_updates(m)
            if aux:
                roots.append(torch.stack([v.float() for v in aux.values()]).sum())
                grads.append(torch.full_like(roots[-1], self.scale / n))
            if roots:
                torch.autograd.backward(roots, grads)
            del losses, features, aux, roots  # the heads' graph (feature mode) goes too
        set_rng_state(after, t.device)
        restore(t.model, self.buffers)  # the statistics as after pass 1: each batch seen once


def restore(model: torch.nn.Module, saved: list[Tensor]) -> None:
    with torch.no_grad():
        for b, value in zip(model.buffers(), saved, strict=True):
            b.copy_(value)


def check_aux(aux: dict[str, Tensor], step: int) -> None:
    """A non-finite auxiliary loss raises before anything of it is backpropagated."""
    for name, value in aux.items():
        if not bool(torch.isfinite(value.detach())):
            raise NonFiniteLossError(f"aux/{name}", float(value.detach()), step)


def backward_aux(aux: dict[str, Tensor], factor: float) -> None:
    """Backpropagate ``factor`` times the sum of one micro-batch's auxiliary losses."""
    (torch.stack([v.float() for v in aux.values()]).sum() * factor).backward()
