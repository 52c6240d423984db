"""The interface every training method (balancer) implements.

A balancer turns the per-task losses of the tasks present in a batch, and, where it needs them,
their Gramian ``G = J J^T`` (``J`` the K x P matrix of per-task gradients), into a
:class:`Decision`: one coefficient per present task, and optionally an objective to
backpropagate instead of ``sum_k w_k L_k`` (for methods with their own learnable parameters,
such as uncertainty weighting).

How the decision is applied (see :func:`manytask.backward`):

* ``requires = "losses"`` (loss level): the objective is backpropagated through everything,
  so the heads too receive the weighted gradient. Cost: one ordinary backward.
* ``requires = "gramian"`` and ``applies_to_heads = False`` (gradient level): the shared part
  receives ``sum_k w_k g_k``; each head receives its own task's gradient, unweighted (the
  convention of torchjd, LibMTL and Algorithm 2 of Sener and Koltun, 2018), unless
  ``head_grad="weighted"`` is asked for.
* ``requires = "gramian"`` and ``applies_to_heads = True``: a loss weighting whose weights are
  computed from gradient information (GradNorm); the objective ``sum_k w_k L_k`` is
  backpropagated through everything.
* ``requires = "jacobian"``: methods that are not a linear combination of the task gradients
  (GradDrop, MoCo, ...) get the K x D Jacobian itself (w.r.t. the shared parameters, or the
  features) in :meth:`Balancer.decide_jacobian` and return the shared update vector.

Absent tasks: a balancer is told the names of all tasks once (:meth:`Balancer.setup`) and at
each step the names of the tasks present in the batch. Stateful methods update only the state
of the tasks present.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

Requirement = Literal["losses", "gramian", "jacobian"]


@dataclass
class Decision:
    """What a balancer decided for one step.

    ``weights``: detached coefficients, one per present task, in the order of ``tasks``.
    ``objective``: a scalar to backpropagate instead of ``sum_k weights_k * losses_k``; only
    loss-level methods with parameters of their own set it.
    ``update``: for ``requires = "jacobian"`` methods, the combined shared gradient itself, a
    flat vector over the Jacobian's columns (then ``weights`` are only reported, and scale the
    heads' gradients under ``head_grad="weighted"``).
    ``head_weights``: where the heads' weights under ``head_grad="weighted"`` differ from
    ``weights`` (Nash-MTL's peer convention: heads weighted before the shared part is clipped).
    """

    weights: Tensor
    objective: Tensor | None = None
    update: Tensor | None = None
    head_weights: Tensor | None = None


class Balancer(nn.Module):
    """Base class of all training methods.

    Subclasses set ``name`` (the registry key), ``requires``, and implement :meth:`decide`.
    Hyper-parameters are keyword arguments of ``__init__``, validated there.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[Requirement] = "losses"
    applies_to_heads: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.task_names: tuple[str, ...] = ()

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once with every task the balancer will see, before the first step.

        Subclasses with per-task state allocate it here (call ``super().setup`` first).
        Calling it again with the same names is a no-op, so a user may call it eagerly.
        """
        names = tuple(task_names)
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if self.task_names and self.task_names != names:
            raise ValueError(
                f"{type(self).__name__} was set up for tasks {self.task_names}, got {names}"
            )
        self.task_names = names

    def index(self, tasks: Sequence[str]) -> Tensor:
        """Positions of ``tasks`` among all tasks given to :meth:`setup`."""
        try:
            return torch.tensor([self.task_names.index(t) for t in tasks], dtype=torch.long)
        except ValueError:
            unknown = [t for t in tasks if t not in self.task_names]
            raise ValueError(
                f"{type(self).__name__}: unknown task(s) {unknown}; set up with {self.task_names}"
            ) from None

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor | None) -> Decision:
        """Return the decision for the present ``tasks``.

        ``losses`` is a 1-D tensor of the present tasks' losses (attached to the graph),
        ``gramian`` their K x K Gramian in float64 (``None`` for loss-level methods).
        """
        raise NotImplementedError  # abstract: every registered subclass overrides it

    def decide_jacobian(self, losses: Tensor, tasks: Sequence[str], jacobian: Tensor) -> Decision:
        """For ``requires = "jacobian"``: the decision, with ``update`` of shape (D,).

        ``jacobian`` is the K x D matrix of the present tasks' gradients (float32 or as
        computed), rows in the order of ``tasks``.
        """
        raise NotImplementedError  # abstract: every "jacobian" subclass overrides it

    def end_epoch(self) -> None:
        """Hook called by the Trainer at the end of each epoch (used by DWA)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, object]:
        """The hyper-parameters this balancer was built with (for logs and configs).

        Convention: every ``__init__`` keyword is stored as an attribute of the same name.
        """
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self" and hasattr(self, n)}


def uniform(k: int, total: float = 1.0) -> Tensor:
    """``k`` equal float64 weights summing to ``total``."""
    return torch.full((k,), total / k, dtype=torch.float64)
