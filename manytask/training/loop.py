"""The epoch loop of :meth:`Trainer.fit`: resume, epochs, validation, callbacks, checkpoints,
logs and progress. Functions of the trainer (``self``), kept apart so that each file reads in
one sitting; the Trainer is not imported here (it imports this module).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .callbacks import main_score
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import barrier
from .evaluation import Results
from .logs import RunLog
from .optim import Schedule
from .progress import Progress, epoch_line
from .sharding import load_targets, save_sources
from .support import truncate_jsonl

Batch = Any


def fit_loop(
    self: Any, train_data: Iterable[Batch], epochs: int, val_data: Iterable[Batch] | None,
    resuming: bool,
) -> list[dict[str, Any]]:
    start = 0
    step_log, epoch_log = open_logs(self)
    self.should_stop = False
    self.schedule = make_schedule(self, train_data, epochs, val_data)
    if resuming:
        assert self.run_dir is not None
        start = resume_state(self, self.run_dir, step_log, epoch_log)
    progress = Progress(
        self.progress and self._is_main,
        self.run_dir / "train.log" if self.run_dir is not None and self._is_main else None,
    )
    for cb in self.callbacks:
        cb.on_fit_start(self)
    summaries: list[dict[str, Any]] = []
    # opened after the resume, dropping the events of steps the resumed run redoes
    board = open_board(self, purge_step=self.step + 1 if resuming else None)
    try:
        for epoch in range(start, epochs):
            if self.should_stop:
                break
            summaries.append(
                run_epoch(self, train_data, epoch, epochs, val_data, step_log, epoch_log,
                            board, progress)
            )
    finally:  # events already logged survive an error
        if board is not None:
            board.close()
    for cb in self.callbacks:
        cb.on_fit_end(self)
    self.history = summaries
    return summaries


def resume_state(
    self: Any, run_dir: Path, step_log: RunLog | None, epoch_log: RunLog | None
) -> int:
    ckpt = latest_checkpoint(run_dir, allow_outside=self.allow_outside_links)
    if ckpt is None:
        raise CheckpointError(f"run_dir {str(run_dir)!r} has no checkpoint to resume from")
    model, optimizer = load_targets(self)  # sharded: whole states cut into the shards
    state = load_checkpoint(
        ckpt, model=model, optimizer=optimizer, balancer=self.balancer,
        allow_outside=self.allow_outside_links,
    )
    self.step = state["step"]
    self.skipped_steps = state.get("skipped_steps", 0)
    if self.schedule is not None and state.get("schedule") is not None:
        self.schedule.load_state_dict(state["schedule"])
    if self.scaler is not None and state.get("scaler") is not None:
        self.scaler.load_state_dict(state["scaler"])
    self.overflow_steps = int(state.get("overflow_steps", 0))
    saved = state.get("callbacks", {})
    for key, cb in zip(callback_keys(self), self.callbacks, strict=True):
        if key in saved:
            cb.load_state_dict(saved[key])
    if step_log is not None and epoch_log is not None:
        step_log.truncate_after("step", self.step)
        epoch_log.truncate_after("epoch", state["epoch"])
        truncate_jsonl(run_dir / "experts.jsonl", "epoch", state["epoch"])
    return int(state["epoch"]) + 1


def make_schedule(
    self: Any, train_data: Iterable[Batch], epochs: int, val_data: Iterable[Batch] | None
) -> Schedule | None:
    name, params, warmup, interval, steps = self._schedule_spec
    if name == "constant" and not warmup:
        return None
    if name == "plateau" and val_data is None:
        raise ValueError("schedule 'plateau' follows the validation score: it needs val_data")
    if steps is None and interval == "epoch":
        steps = epochs
    elif steps is None and name in ("cosine", "linear"):
        try:
            steps = epochs * len(train_data)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"schedule {name!r}: train_data has no len(); give schedule_steps"
            ) from None
    return Schedule(self.optimizer, name, params, warmup=warmup, total=steps,
                    interval=interval)


def callback_keys(self: Any) -> list[str]:
    return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(self.callbacks)]


def run_epoch(
    self: Any, train_data: Iterable[Batch], epoch: int, epochs: int,
    val_data: Iterable[Batch] | None, step_log: RunLog | None, epoch_log: RunLog | None,
    board: Any, progress: Progress,
) -> dict[str, Any]:
    self.epoch = epoch
    set_epoch = getattr(train_data, "set_epoch", None) or getattr(
        getattr(train_data, "sampler", None), "set_epoch", None
    )
    if callable(set_epoch):
        set_epoch(epoch)
    began, first_step = time.perf_counter(), self.step
    seen = 0
    aux_sums: dict[str, float] = {}
    aux_steps = 0
    pending: list[Batch] = []
    batches = iter(progress.epoch(train_data, epoch, epochs))
    while True:
        batch = next(batches, None)
        if batch is not None:
            seen += 1
            pending.append(batch)
            if len(pending) < self.accumulate:
                continue
        if not pending:  # the epoch's last micro-batches step together, fewer if need be
            break
        row = self.train_step(pending if self.accumulate > 1 else pending[0])
        pending = []
        if row is None:
            continue
        aux = {k[4:]: v for k, v in row.items() if k.startswith("aux/")}
        if aux:
            aux_steps += 1
            for name, value in aux.items():
                aux_sums[name] = aux_sums.get(name, 0.0) + value
        if step_log is not None and (self.step % self.log_every == 0):
            step_log.write(row)
            if board is not None:
                for key, value in row.items():
                    if key not in ("step", "epoch"):
                        board.add_scalar(key, value, self.step)
        progress.step(seen, row)
        for cb in self.callbacks:
            cb.on_step_end(self, row)
    if seen == 0:  # an empty data set; batches without labels are skipped, not this
        raise ValueError(f"train_data yielded no batch in epoch {epoch}")
    self.balancer.end_epoch()
    summary: dict[str, Any] = {
        "epoch": epoch,
        "step": self.step,
        "seconds": time.perf_counter() - began,
        "steps": self.step - first_step,
    }
    if aux_steps:  # the model's auxiliary losses, mean over the epoch's steps
        summary["aux"] = {name: total / aux_steps for name, total in aux_sums.items()}
    score = None
    if val_data is not None:
        summary["val"] = results = self.evaluate(val_data)
        score = summary["score"] = main_score(results, self.tasks, self.monitor)
        if epoch_log is not None:
            write_metrics(epoch_log, epoch, "val", results)
        if board is not None:  # on the global-step axis, like the training curves
            for task, metrics in results.items():
                for metric, value in metrics.items():
                    board.add_scalar(f"val/{task}/{metric}", value, self.step)
            board.flush()
        for cb in self.callbacks:
            cb.on_validation_end(self, results)
    if self.schedule is not None:
        self.schedule.after_epoch(score)
    experts = self._report_experts(epoch)
    if experts is not None:
        summary["experts"] = experts
    if self.run_dir is not None:  # sharded: gathered on every rank (collectives), rank 0 writes
        model, optimizer = save_sources(self)
    if self.run_dir is not None and self._is_main:
        info = {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "overflow_steps": self.overflow_steps,
            "callbacks": {
                k: cb.state_dict()
                for k, cb in zip(callback_keys(self), self.callbacks, strict=True)
            },
        }
        save_checkpoint(
            self.run_dir, epoch, model=model, optimizer=optimizer,
            balancer=self.balancer, keep=self.keep_checkpoints, info=info,
            protect=[f"epoch-{e:04d}" for e in self.protected_epochs],
        )
    barrier(self._dist)  # no rank runs ahead of the checkpoint it could resume from
    progress.end_epoch(epoch_line(summary, epochs, score))
    for cb in self.callbacks:
        cb.on_epoch_end(self, summary)
    return summary


def open_board(self: Any, purge_step: int | None = None) -> Any:
    if not self.tensorboard or self.run_dir is None or not self._is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "tensorboard=True needs the tensorboard package: pip install tensorboard"
        ) from err
    return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)


def open_logs(self: Any) -> tuple[RunLog | None, RunLog | None]:
    if self.run_dir is None or not self._is_main:
        return None, None
    names = [t.name for t in self.tasks]
    cols = ["step", "epoch"]
    cols += [f"loss/{n}" for n in names] + [f"weight/{n}" for n in names]
    cols += [f"cos/{a}/{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    cols += [f"aux/{name}" for name in self.aux_names]
    step_log = RunLog(self.run_dir / "steps", cols, self.log_format)
    epoch_log = RunLog(
        self.run_dir / "metrics", ["epoch", "split", "task", "metric", "value"], self.log_format
    )
    return step_log, epoch_log


def write_metrics(log: RunLog, epoch: int, split: str, results: Results) -> None:
    for task, metrics in results.items():
        for metric, value in metrics.items():
            log.write(
                {"epoch": epoch, "split": split, "task": task, "metric": metric, "value": value}
            )

