"""The kinds of training method (balancer), and what every method shares.

A method turns the per-task losses of the tasks present in a batch, and, where its kind needs
it, per-task gradient information, into a :class:`Decision`: one coefficient per present
task, and optionally an objective to backpropagate instead of ``sum_k w_k L_k``. The engine
(:func:`manytask.backward`) computes the information a kind needs and applies the decision:

* :class:`LossWeighting` sees the losses; ``sum_k w_k L_k`` (or its own objective) is
  backpropagated through everything, heads included. Cost: one ordinary backward.
* :class:`GramianWeighting` sees the K x K Gramian ``G = J J^T`` (``J`` the K x P matrix of
  per-task gradients; computed apart, by the engine, as torchjd does) and returns the
  coefficients of a combination: the shared part receives ``sum_k w_k g_k``; each head its own
  task's gradient, unweighted (the convention of torchjd, LibMTL and Algorithm 2 of Sener and
  Koltun, 2018), unless ``head_grad="weighted"`` is asked for.
* :class:`GramianLossWeighting` sees the Gramian but is a loss weighting (GradNorm, DB-MTL):
  its weights come from gradient information, and ``sum_k w_k L_k`` is backpropagated
  through everything.
* :class:`JacobianAggregator` sees the K x D Jacobian itself (w.r.t. the shared parameters,
  or the features) and returns the shared update vector: methods that are not a linear
  combination of the task gradients (GradDrop, MoCo, ...).

Per-task state: a method declares it in ``state`` (name -> :class:`State`) and the base class
allocates it when the task names are known (:meth:`Balancer.setup`), as buffers or, for
``learnable`` entries, one parameter per task, so that it is saved in the state dict. Absent
tasks: the method is told all task names once and at each step the names of the tasks
present; stateful methods update only the state of the tasks present.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .schedule import EverySteps

Requirement = Literal["losses", "gramian", "jacobian"]


@dataclass
class Decision:
    """What a method decided for one step.

    ``weights``: detached coefficients, one per present task, in the order of ``tasks``.
    ``objective``: a scalar to backpropagate instead of ``sum_k weights_k * losses_k``; only
    loss weightings with parameters of their own set it.
    ``update``: for a :class:`JacobianAggregator`, the combined shared gradient itself, a flat
    vector over the Jacobian's columns (then ``weights`` are only reported, and scale the
    heads' gradients under ``head_grad="weighted"``).
    ``head_weights``: where the heads' weights under ``head_grad="weighted"`` differ from
    ``weights`` (Nash-MTL's peer convention: heads weighted before the shared part is clipped).
    """

    weights: Tensor
    objective: Tensor | None = None
    update: Tensor | None = None
    head_weights: Tensor | None = None


@dataclass(frozen=True)
class State:
    """One declared piece of a method's state.

    ``per``: ``"task"`` gives shape (K, *shape), ``"pair"`` (K, K, *shape), ``"run"`` just
    ``shape`` (a step counter). ``fill`` may depend on the number of tasks K (a function of
    it, e.g. ``lambda k: 1 / k``). ``learnable``: one ``nn.Parameter`` of ``shape`` per task, in
    an ``nn.ParameterList`` (so a task absent from a batch gets no gradient and optimisers
    skip it); otherwise a buffer filled with ``fill``.
    """

    fill: float | Callable[[int], float] = 0.0
    dtype: torch.dtype = torch.float64
    per: Literal["task", "pair", "run"] = "task"
    shape: tuple[int, ...] = ()
    learnable: bool = False


def declare(**entries: State) -> Mapping[str, State]:
    """A method's ``state`` declaration: ``state = declare(steps=State(per="run"), ...)``."""
    return MappingProxyType(entries)


class Balancer(nn.Module):
    """What every training method shares: its name, its tasks, its declared state.

    Subclass one of the kinds (:class:`LossWeighting`, :class:`GramianWeighting`,
    :class:`GramianLossWeighting`, :class:`JacobianAggregator`), set ``name`` (the registry
    key) and ``state``, and implement ``decide``. Hyper-parameters are keyword arguments of
    ``__init__``, validated there.
    """

    name: ClassVar[str] = ""
    #: what the method sees, set by its kind (read by listings and the engine)
    requires: Requirement = "losses"
    #: whether the decision weights the losses, heads included (set by the kind)
    weights_losses: bool = True
    state: ClassVar[Mapping[str, State]] = MappingProxyType({})

    def __init__(self) -> None:
        super().__init__()
        self.task_names: tuple[str, ...] = ()
        # An engine schedule (see manytask.balancers.periodic), None: decide at every step.
        self.schedule: EverySteps | None = None

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once with every task the method will see, before the first step; allocates
        the declared ``state``. Calling it again with the same names is a no-op, so a user may
        call it eagerly (``make_balancer(name, tasks=[...])`` does)."""
        names = tuple(task_names)
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if self.task_names and self.task_names != names:
            raise ValueError(
                f"{type(self).__name__} was set up for tasks {self.task_names}, got {names}"
            )
        first = not self.task_names
        self.task_names = names
        if first:
            self.allocate_state(len(names))
            schedule = self.schedule
            if schedule is not None:
                schedule.setup(names)

    def allocate_state(self, k: int) -> None:
        """Create every entry of ``state`` for ``k`` tasks."""
        for key, spec in self.state.items():
            fill = spec.fill(k) if callable(spec.fill) else spec.fill
            if spec.learnable:
                self.register_module(
                    key,
                    nn.ParameterList(
                        nn.Parameter(torch.full(spec.shape, fill, dtype=spec.dtype))
                        for _ in range(k)
                    ),
                )
                continue
            lead = {"task": (k,), "pair": (k, k), "run": ()}[spec.per]
            self.register_buffer(
                key, torch.full((*lead, *spec.shape), fill, dtype=spec.dtype)
            )

    def index(self, tasks: Sequence[str]) -> Tensor:
        """Positions of ``tasks`` among all tasks given to :meth:`setup`."""
        try:
            return torch.tensor([self.task_names.index(t) for t in tasks], dtype=torch.long)
        except ValueError:
            unknown = [t for t in tasks if t not in self.task_names]
            raise ValueError(
                f"{type(self).__name__}: unknown task(s) {unknown}; set up with {self.task_names}"
            ) from None

    def recompute_every(self, every: int) -> Balancer:
        """Let the engine recompute this gradient-level method's weights only every ``every``
        steps and reuse them between (see :mod:`manytask.balancers.periodic`); returns self."""
        if self.requires == "losses":
            raise ValueError(f"{self.name}: a loss weighting computes no gradient to skip")
        if self.task_names:
            raise ValueError(f"{self.name}: set the schedule before setup()")
        self.schedule = EverySteps(every)
        return self

    def end_epoch(self) -> None:
        """Hook called by the Trainer at the end of each epoch (used by DWA)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, object]:
        """The hyper-parameters this method was built with (for logs and configs).

        Convention: every ``__init__`` keyword is stored as an attribute of the same name.
        """
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self" and hasattr(self, n)}


class LossWeighting(Balancer):
    """A method that sees only the losses: ``decide(losses, tasks)``."""

    requires = "losses"
    weights_losses = True

    def decide(self, losses: Tensor, tasks: Sequence[str]) -> Decision:
        """The weights for the present ``tasks``; ``losses`` is attached to the graph."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decide()")


class GramianWeighting(Balancer):
    """A method that combines the task gradients with coefficients computed from their
    Gramian: ``decide(losses, tasks, gramian)``, ``gramian`` K x K float64."""

    requires = "gramian"
    weights_losses = False

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        """The coefficients ``w`` of ``sum_k w_k g_k`` for the present ``tasks``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decide()")


class GramianLossWeighting(Balancer):
    """A loss weighting driven by gradient information (GradNorm, DB-MTL):
    ``decide(losses, tasks, gramian)``; ``sum_k w_k L_k`` is backpropagated through
    everything."""

    requires = "gramian"
    weights_losses = True

    def decide(self, losses: Tensor, tasks: Sequence[str], gramian: Tensor) -> Decision:
        """The loss weights for the present ``tasks``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decide()")


class JacobianAggregator(Balancer):
    """A method that sees the K x D Jacobian (rows in the order of ``tasks``) and returns the
    shared update, ``Decision.update`` of shape (D,): ``decide(losses, tasks, jacobian)``."""

    requires = "jacobian"
    weights_losses = False

    def decide(self, losses: Tensor, tasks: Sequence[str], jacobian: Tensor) -> Decision:
        """The decision, with ``update`` of shape (D,)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decide()")


def uniform(k: int, total: float = 1.0) -> Tensor:
    """``k`` equal float64 weights summing to ``total``."""
    return torch.full((k,), total / k, dtype=torch.float64)
