"""Callbacks: code run at fixed points of :meth:`Trainer.fit`, with the trainer at hand.

Hooks, in the order they run: ``on_fit_start`` (after a resume restored the state),
``on_step_end`` (after each optimiser step, with its log row), ``on_validation_end`` (with the
epoch's validation results, before the epoch's checkpoint is written), ``on_epoch_end`` (after
it), ``on_fit_end``. A callback that keeps state across epochs returns it from
:meth:`Callback.state_dict` (JSON values); the trainer stores it in each checkpoint, so a
resumed run continues exactly as an uninterrupted one.

Built in: :class:`EarlyStopping` and :class:`BestCheckpoint`, both on the *main validation
score* of :func:`main_score`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..tasks import Task

# The Trainer (not imported: it imports this module). A hook reads and sets its attributes:
# tasks, model, run_dir, epoch, step, optimizer, should_stop, protected_epochs, mark_best.
Trainer = Any

Results = Mapping[str, Mapping[str, float]]


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training is about to start (or continue, after a resume)."""

    def on_step_end(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        """An optimiser step was taken; ``row`` is its log row (losses, weights, ...)."""

    def on_validation_end(self, trainer: Trainer, results: Results) -> None:
        """The epoch's validation results: ``{task: {metric: value}}``."""

    def on_epoch_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        """An epoch ended and its checkpoint (if any) was written."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training ended (all epochs done, or stopped early)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


def main_score(results: Results, tasks: Sequence[Task], monitor: str = "mean") -> float:
    """The validation score that early stopping and the best checkpoint follow; higher is better.

    ``"mean"``: the mean over tasks of each task's main metric (its first), negated when lower
    is better (so accuracy 0.9 counts +0.9, an MSE of 0.2 counts -0.2); a task with no metric
    counts its negated loss. ``"loss"``: the negated mean validation loss. ``"TASK/METRIC"``:
    that one value, negated when lower is better. Tasks absent from ``results`` are left out.
    """
    by_name = {t.name: t for t in tasks}
    if monitor == "loss":
        losses = [r["loss"] for r in results.values() if "loss" in r]
        return -sum(losses) / len(losses) if losses else math.nan
    if monitor == "mean":
        values = []
        for name, r in results.items():
            task = by_name.get(name)
            if task is not None and task.metrics and task.metrics[0].name in r:
                m = task.metrics[0]
                values.append(r[m.name] if m.higher_is_better else -r[m.name])
            elif "loss" in r:
                values.append(-r["loss"])
        return sum(values) / len(values) if values else math.nan
    name, _, metric = monitor.partition("/")
    if name not in results or metric not in results[name]:
        return math.nan
    higher = metric != "loss" and any(
        m.higher_is_better for m in by_name[name].metrics if m.name == metric
    )
    return results[name][metric] if higher else -results[name][metric]


def check_monitor(monitor: str, tasks: Sequence[Task]) -> None:
    """Refuse a ``monitor`` that names no task or metric of ``tasks``, in one line."""
    if monitor in ("mean", "loss"):
        return
    name, sep, metric = monitor.partition("/")
    task = next((t for t in tasks if t.name == name), None)
    metrics = ["loss"] + [m.name for m in task.metrics] if task else []
    if not sep or task is None or metric not in metrics:
        options = ["mean", "loss"] + [f"{t.name}/{m.name}" for t in tasks for m in t.metrics]
        raise ValueError(f"monitor {monitor!r} is not one of {options[:8]} (or TASK/loss)")


class EarlyStopping(Callback):
    """Stop when the main validation score has not improved by more than ``min_delta`` for
    ``patience`` validated epochs in a row."""

    def __init__(self, patience: int, *, min_delta: float = 0.0, monitor: str = "mean") -> None:
        if patience < 1:
            raise ValueError(f"early stopping patience must be >= 1, got {patience}")
        if not min_delta >= 0:
            raise ValueError(f"early stopping min_delta must be >= 0, got {min_delta}")
        self.patience, self.min_delta, self.monitor = patience, min_delta, monitor
        self.best = -math.inf
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        check_monitor(self.monitor, trainer.tasks)
        if self.stopped_epoch is not None:  # a resumed run that had stopped stays stopped
            trainer.should_stop = True

    def on_validation_end(self, trainer: Trainer, results: Results) -> None:
        score = main_score(results, trainer.tasks, self.monitor)
        if score > self.best + self.min_delta:
            self.best, self.wait = score, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = trainer.epoch
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        best = None if self.best == -math.inf else self.best
        return {"best": best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = -math.inf if state.get("best") is None else float(state["best"])
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = state.get("stopped_epoch")


class BestCheckpoint(Callback):
    """Keep the checkpoint of the epoch with the best main validation score.

    With a ``run_dir`` the trainer keeps that epoch's checkpoint from the clean-up and points
    ``checkpoints/best`` at it; without one, a copy of the weights is kept in memory.
    :meth:`Trainer.restore_best` loads them back (the CLI does, before the test metrics).
    """

    def __init__(self, monitor: str = "mean") -> None:
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.weights: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        check_monitor(self.monitor, trainer.tasks)
        if self.best_epoch is not None:  # resumed: the pointer may lag the restored state
            trainer.protected_epochs = {self.best_epoch}
            trainer.mark_best(self.best_epoch)

    def on_validation_end(self, trainer: Trainer, results: Results) -> None:
        score = main_score(results, trainer.tasks, self.monitor)
        if score > self.best:  # nan never improves
            self.best, self.best_epoch = score, trainer.epoch
            if trainer.run_dir is None:
                self.weights = {
                    k: v.detach().clone() for k, v in trainer.model.state_dict().items()
                }
        if self.best_epoch is not None:
            trainer.protected_epochs = {self.best_epoch}

    def on_epoch_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        if self.best_epoch == trainer.epoch:
            trainer.mark_best(self.best_epoch)

    def state_dict(self) -> dict[str, Any]:
        best = None if self.best == -math.inf else self.best
        return {"best": best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = -math.inf if state.get("best") is None else float(state["best"])
        self.best_epoch = state.get("best_epoch")
