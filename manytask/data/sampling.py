"""Task samplers for multi-dataset training, and the iterator that follows them.

When each task has its own data set (of size ``n_k``), every step trains on a batch of one
task, and a :class:`TaskSampler` decides which:

* :class:`ProportionalSampler`: ``p_k`` proportional to ``n_k`` (every example equally likely);
* :class:`TemperatureSampler`: ``p_k`` proportional to ``n_k^(1/T)`` (``T = 1`` proportional,
  large ``T`` towards uniform; the temperature sampling of multilingual training, e.g.
  Arivazhagan et al., 2019);
* :class:`RoundRobinSampler`: the tasks in turn;
* :class:`EXP3Sampler`: an adversarial bandit (Auer, Cesa-Bianchi, Freund and Schapire, "The
  Nonstochastic Multiarmed Bandit Problem", SIAM J. Comput. 2002, Section 3, algorithm Exp3)
  rewarded by the drop of the sampled task's loss;
* :class:`TwoPhaseSampler`: only the large tasks first, then all tasks (Choi et al., "Order
  Matters in the Presence of Dataset Imbalance for Multilingual Learning", NeurIPS 2023:
  pre-train on the high-resource tasks, then fine-tune on the mixture of all tasks).

:class:`MultiTaskBatches` turns ``{task: DataLoader}`` and a sampler into a stream of
``(task, batch)`` pairs. Randomness comes from the global torch RNG, or from a private
generator when a sampler is given ``seed=`` (its state is part of ``state_dict``).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..registry import REQUIRED, Param, Registry


def _check_tasks(tasks: Sequence[str], owner: str) -> tuple[str, ...]:
    names = tuple(tasks)
    if not names:
        raise ValueError(f"{owner}: needs at least one task")
    if not all(isinstance(t, str) for t in names):
        raise TypeError(f"{owner}: task names must be strings, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: task names must be unique, got {names}")
    return names


def _check_sizes(sizes: Mapping[str, int], owner: str) -> dict[str, int]:
    _check_tasks(list(sizes), owner)
    for task, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"{owner}: size of task {task!r} must be a positive integer, got {n!r}"
            )
    return dict(sizes)


def _check_positive(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
    return float(value)


class TaskSampler(ABC):
    """Base class: chooses the task of the next batch.

    ``sample()`` returns a task name; ``update(task, reward)`` feeds back how useful the last
    batch of ``task`` was (only adaptive samplers learn from it; the others ignore it).
    ``state_dict``/``load_state_dict`` save and restore everything needed to continue the same
    sequence of draws.
    """

    def __init__(self, tasks: Sequence[str], seed: int | None = None) -> None:
        self.tasks = _check_tasks(tasks, type(self).__name__)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{type(self).__name__}: seed must be an integer, got {seed!r}")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def probabilities(self) -> dict[str, float]:
        """The probability of each task at the next draw."""
        probs = self._probs()
        return dict(zip(self.tasks, probs.tolist(), strict=True))

    def sample(self) -> str:
        return self.tasks[self._draw(self._probs())]

    def update(self, task: str, reward: float) -> None:
        """Feedback on the last batch of ``task``; non-adaptive samplers only validate it."""
        self._position(task)
        if not math.isfinite(reward):
            raise ValueError(
                f"{type(self).__name__}: reward for {task!r} must be finite, got {reward}"
            )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"tasks": list(self.tasks)}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state.get("tasks", [])) != list(self.tasks):
            raise ValueError(
                f"{type(self).__name__}: state is for tasks {state.get('tasks')}, "
                f"this sampler has {list(self.tasks)}"
            )
        if self._generator is not None and "generator" in state:
            self._generator.set_state(state["generator"])

    # ------------------------------------------------------------------ helpers
    @abstractmethod
    def _probs(self) -> Tensor:
        """The float64 probabilities of the next draw, in the order of ``self.tasks``."""

    def _draw(self, probs: Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _position(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(
                f"{type(self).__name__}: unknown task {task!r}; tasks are {list(self.tasks)}"
            ) from None


class TemperatureSampler(TaskSampler):
    """``p_k`` proportional to ``n_k^(1/T)``: ``T = 1`` is proportional, larger ``T`` flatter."""

    def __init__(self, sizes: Mapping[str, int], temperature: float = 1.0,
                 seed: int | None = None) -> None:
        sizes = _check_sizes(sizes, type(self).__name__)
        super().__init__(list(sizes), seed)
        self.sizes = sizes
        self.temperature = _check_positive(temperature, "temperature", type(self).__name__)
        n = torch.tensor([float(sizes[t]) for t in self.tasks], dtype=torch.float64)
        # In log space: n^(1/T) overflows for large data sets and small T.
        self._p = torch.softmax(n.log() / self.temperature, dim=0)

    def _probs(self) -> Tensor:
        return self._p


class ProportionalSampler(TemperatureSampler):
    """``p_k = n_k / sum_j n_j``: every training example is equally likely to be seen."""

    def __init__(self, sizes: Mapping[str, int], seed: int | None = None) -> None:
        super().__init__(sizes, 1.0, seed)


class RoundRobinSampler(TaskSampler):
    """The tasks in the given order, over and over (no randomness)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self._next = 0

    def _probs(self) -> Tensor:
        probs = torch.zeros(len(self.tasks), dtype=torch.float64)
        probs[self._next] = 1.0
        return probs

    def sample(self) -> str:
        task = self.tasks[self._next]
        self._next = (self._next + 1) % len(self.tasks)
        return task

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "next": self._next}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._next = int(state["next"]) % len(self.tasks)


def loss_drop_reward(before: float, after: float) -> float:
    """The relative drop of a loss, ``(before - after) / before``, clipped to ``[0, 1]``.

    The reward :class:`EXP3Sampler` expects: scale-free across tasks, 0 when the loss did not
    decrease, 1 when it reached 0. Both losses must be finite and non-negative.
    """
    for name, v in (("before", before), ("after", after)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"loss_drop_reward: {name} must be a finite loss >= 0, got {v}")
    if before == 0:
        return 0.0
    return min(1.0, max(0.0, (before - after) / before))


class EXP3Sampler(TaskSampler):
    """Exp3 (Auer et al., 2002, Section 3): an adversarial multi-armed bandit over tasks.

    With log-weights ``u`` (0 at the start), the draw probabilities are
    ``p = (1 - gamma) softmax(u) + gamma / K``, so every task keeps ``p_k >= gamma / K``.
    After a batch of task ``i`` with reward ``x`` in ``[0, 1]`` (e.g. :func:`loss_drop_reward`
    of its loss before and after the step), the importance-weighted estimate ``x / p_i``
    updates ``u_i += eta * x / p_i``; the other tasks' estimates are 0.

    ``eta`` defaults to ``gamma / K``, Auer et al.'s choice. Rewards outside ``[0, 1]`` are
    clipped. Call :meth:`update` after each :meth:`sample`, before the next draw: ``p_i`` is
    the probability the task was drawn with.
    """

    def __init__(self, tasks: Sequence[str], gamma: float = 0.1, eta: float | None = None,
                 seed: int | None = None) -> None:
        super().__init__(tasks, seed)
        owner = type(self).__name__
        gamma = _check_positive(gamma, "gamma", owner)
        if gamma > 1:
            raise ValueError(f"{owner}: gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.eta = gamma / len(self.tasks) if eta is None else _check_positive(eta, "eta", owner)
        self.log_weights = torch.zeros(len(self.tasks), dtype=torch.float64)

    def _probs(self) -> Tensor:
        k = len(self.tasks)
        return (1 - self.gamma) * torch.softmax(self.log_weights, dim=0) + self.gamma / k

    def update(self, task: str, reward: float) -> None:
        super().update(task, reward)
        i = self._position(task)
        x = min(1.0, max(0.0, float(reward)))
        self.log_weights[i] += self.eta * x / float(self._probs()[i])
        self.log_weights -= self.log_weights.max()  # only differences matter; avoids overflow

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "log_weights": self.log_weights.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.log_weights = state["log_weights"].clone().to(torch.float64)


class TwoPhaseSampler(TaskSampler):
    """Large tasks only for ``switch_step`` draws, then all tasks with ``then``.

    The large tasks are those with ``n_k >= min_size``, or the ``top_fraction`` of tasks with
    the most examples (at least one task); give exactly one of the two. In the first phase
    they are drawn with ``p_k`` proportional to ``n_k^(1/temperature)``; afterwards ``then``
    decides (default: temperature sampling over all tasks with the same temperature).
    ``update`` is passed on to ``then`` for the batches it drew.
    """

    def __init__(self, sizes: Mapping[str, int], switch_step: int, *,
                 min_size: int | None = None, top_fraction: float | None = None,
                 temperature: float = 1.0, then: TaskSampler | None = None,
                 seed: int | None = None) -> None:
        owner = type(self).__name__
        sizes = _check_sizes(sizes, owner)
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0:
            raise ValueError(f"{owner}: switch_step must be an integer >= 0, got {switch_step!r}")
        if (min_size is None) == (top_fraction is None):
            raise ValueError(f"{owner}: give exactly one of min_size and top_fraction")
        ranked = sorted(sizes, key=lambda t: -sizes[t])
        if min_size is not None:
            _check_positive(min_size, "min_size", owner)
            large = [t for t in ranked if sizes[t] >= min_size]
            if not large:
                raise ValueError(f"{owner}: no task has at least min_size={min_size} examples "
                                 f"(sizes {sizes})")
        else:
            fraction = _check_positive(top_fraction, "top_fraction", owner)
            if fraction > 1:
                raise ValueError(f"{owner}: top_fraction must be in (0, 1], got {fraction}")
            large = ranked[: max(1, round(fraction * len(ranked)))]
        super().__init__(list(sizes))  # the two phases draw with their own generators
        self.seed = seed
        self.sizes = sizes
        self.switch_step = switch_step
        self.min_size, self.top_fraction, self.temperature = min_size, top_fraction, temperature
        self.large = tuple(t for t in self.tasks if t in large)
        self.first = TemperatureSampler({t: sizes[t] for t in self.large}, temperature, seed)
        then_seed = None if seed is None else seed + 1  # not the first phase's sequence again
        self.then = then if then is not None else TemperatureSampler(sizes, temperature, then_seed)
        if set(self.then.tasks) != set(self.tasks):
            raise ValueError(
                f"{owner}: the second-phase sampler has tasks {list(self.then.tasks)}, "
                f"expected {list(self.tasks)}"
            )
        self.step = 0

    @property
    def phase(self) -> int:
        """1 while only the large tasks are drawn, then 2."""
        return 1 if self.step < self.switch_step else 2

    def probabilities(self) -> dict[str, float]:
        inner = self.first.probabilities() if self.phase == 1 else self.then.probabilities()
        return {t: inner.get(t, 0.0) for t in self.tasks}

    def _probs(self) -> Tensor:
        probs = self.probabilities()
        return torch.tensor([probs[t] for t in self.tasks], dtype=torch.float64)

    def sample(self) -> str:
        sampler = self.first if self.phase == 1 else self.then
        self.step += 1
        return sampler.sample()

    def update(self, task: str, reward: float) -> None:
        super().update(task, reward)
        if self.step > self.switch_step:  # the batch rewarded was drawn by ``then``
            self.then.update(task, reward)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step": self.step,
                "first": self.first.state_dict(), "then": self.then.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.step = int(state["step"])
        self.first.load_state_dict(state["first"])
        self.then.load_state_dict(state["then"])


def dataset_sizes(loaders: Mapping[str, Any]) -> dict[str, int]:
    """``{task: number of examples}`` of DataLoaders (``len(loader.dataset)``)."""
    sizes = {}
    for task, loader in loaders.items():
        dataset = getattr(loader, "dataset", None)
        try:
            sizes[task] = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"dataset_sizes: the loader of task {task!r} has no sized dataset; "
                            "give the sizes yourself") from None
    return sizes


class MultiTaskBatches:
    """Yields ``(task, batch)``: ``sampler`` picks the task, that task's loader the batch.

    An exhausted loader is restarted (a new pass over that task's data, reshuffled if the
    loader shuffles), so tasks of any size can be mixed. ``steps`` bounds the number of
    batches (``None``: endless). Each iteration continues the sampler's sequence; to resume a
    run, restore the sampler with ``load_state_dict`` (the loaders' positions are not saved).
    ``epochs[task]`` counts the completed passes over each task's data. An adaptive sampler
    (:class:`EXP3Sampler`) learns only from what the training loop tells it: call
    ``sampler.update(task, loss_drop_reward(before, after))`` after each step.
    """

    def __init__(self, loaders: Mapping[str, Iterable[Any]], sampler: TaskSampler,
                 steps: int | None = None) -> None:
        if set(loaders) != set(sampler.tasks):
            raise ValueError(f"MultiTaskBatches: loaders for tasks {sorted(loaders)} but the "
                             f"sampler draws {sorted(sampler.tasks)}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 0):
            raise ValueError(f"MultiTaskBatches: steps must be an integer >= 0, got {steps!r}")
        self.loaders = dict(loaders)
        self.sampler = sampler
        self.steps = steps
        self.epochs = dict.fromkeys(self.loaders, 0)
        self._iterators: dict[str, Iterator[Any]] = {}

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("MultiTaskBatches without steps= is endless and has no length")
        return self.steps

    def _next_batch(self, task: str) -> Any:
        iterator = self._iterators.get(task)
        if iterator is not None:
            try:
                return next(iterator)
            except StopIteration:
                self.epochs[task] += 1
        iterator = iter(self.loaders[task])
        self._iterators[task] = iterator
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(
                f"MultiTaskBatches: the loader of task {task!r} yields no batch"
            ) from None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        produced = 0
        while self.steps is None or produced < self.steps:
            task = self.sampler.sample()
            yield task, self._next_batch(task)
            produced += 1


# ---------------------------------------------------------------------------- by name
SAMPLERS: Registry[type[TaskSampler]] = Registry("task sampler")
_SEED = Param("int", None, "seed of the draws (default: unseeded)", nullable=True)
_TEMPERATURE = Param("float", 1.0, "p_k proportional to n_k^(1/T)", low=0.0, low_open=True)
SAMPLERS.add("temperature", TemperatureSampler, {"temperature": _TEMPERATURE, "seed": _SEED})
SAMPLERS.add("proportional", ProportionalSampler, {"seed": _SEED})
SAMPLERS.add("round_robin", RoundRobinSampler, {})
SAMPLERS.add("exp3", EXP3Sampler, {
    "gamma": Param("float", 0.1, "exploration share", low=0.0, high=1.0, low_open=True),
    "eta": Param("float", None, "step of the log-weights (default: gamma / K)", low=0.0,
                 low_open=True, nullable=True),
    "seed": _SEED,
}, reference="Auer et al., 2002")
SAMPLERS.add("two_phase", TwoPhaseSampler, {
    "switch_step": Param("int", REQUIRED, "draws of the first phase", low=0),
    "min_size": Param("int", None, "large tasks: at least this many examples", low=1,
                      nullable=True),
    "top_fraction": Param("float", None, "large tasks: this fraction of the largest", low=0.0,
                          high=1.0, low_open=True, nullable=True),
    "temperature": _TEMPERATURE,
    "then": Param("any", None, "sampler of the second phase (default: temperature)",
                  nullable=True),
    "seed": _SEED,
})


def make_sampler(name: str, sizes: Mapping[str, int], **params: Any) -> TaskSampler:
    """Sampler ``name`` over tasks of ``sizes`` (``{task: examples}``), parameters validated
    against its declaration (one-line error with a hint) before it is built."""
    SAMPLERS.validate(name, params)
    cls = SAMPLERS.get(name)
    first = list(inspect.signature(cls.__init__).parameters)[1]  # after self: sizes or tasks
    data: Any = list(sizes) if first == "tasks" else sizes
    return cls(data, **params)
