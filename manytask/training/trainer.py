"""The Trainer: fit and evaluate a multi-task model with any balancer.

It does what a user's own loop would do with :func:`manytask.backward`, plus the chores:
per-task metrics, a progress bar, CSV or JSON-lines logs, an atomic checkpoint each epoch and
exact resume (on CPU, a run stopped and resumed ends with the same weights, bit for bit, as one
that never stopped).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..backward import BackwardResult, HeadGrad, NonFiniteLossError, backward
from ..balancers import Balancer, make_balancer
from ..config import check_run_dir
from ..flat import check_flat_method, flat_backward
from ..gradients import MODES, Mode, feature_tensors, task_gradients
from ..models.base import MultiTaskModel
from ..models.experts import ExpertSet
from ..models.routing import expert_report
from ..tasks import Task, task_losses
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import barrier, context, sync_gradients
from .logs import LogFormat, RunLog

Batch = tuple[Any, Mapping[str, Tensor]]
OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
Results = dict[str, dict[str, float]]


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


class Trainer:
    """Train ``model`` on ``tasks`` with ``balancer``.

    Args:
        model: a :class:`~manytask.models.MultiTaskModel` with one head per task.
        tasks: the tasks, in the order used for logs.
        balancer: a :class:`~manytask.balancers.Balancer` or a registry name.
        optimizer: a factory ``params -> Optimizer`` (default: Adam with ``lr``). The
            balancer's own parameters (uncertainty weighting's log-variances, ...) are added.
        lr: learning rate of the default optimizer.
        mode: ``"exact"`` or ``"feature"`` for gradient-level methods.
        head_grad: ``"own"`` or ``"weighted"`` (see :func:`manytask.backward`).
        run_dir: where logs and checkpoints go (none: no logs, no checkpoints).
        log_format: ``"csv"`` or ``"jsonl"``.
        log_every: steps between rows of the step log.
        cosine_every: for loss-level methods, which compute no task gradients, also compute
            the gradient cosine similarities every this many steps, for the log (costs one
            extra head backward per task, plus the batched shared backward in exact mode).
            Gradient-level methods log them at every logged step at no extra cost.
        skip_nonfinite: skip a step whose loss or gradient is NaN/inf (counted and warned)
            instead of stopping with an error. Either way no weight is ever updated with it.
        clip_grad_norm: clip the total gradient norm to this value (none: no clipping).
        keep_checkpoints: how many epoch checkpoints to keep.
        progress: show a progress bar.
        device: where to train.
        flat_rho: if set, task-based flat regions (:func:`manytask.flat_backward`) with this
            SAM radius around the gradient-level ``balancer``: each step re-runs the forward
            once per task at that task's perturbed point (1 + K forwards, about 1 + K
            backwards), with the same dropout draws. Exact mode, one process.
        tensorboard: also write the step log and the epoch metrics as TensorBoard scalars in
            ``run_dir/tensorboard`` (needs the ``tensorboard`` package).

    Distributed: when ``torch.distributed`` is initialised with several processes (e.g. under
    ``torchrun``), each rank trains on its shard of every global batch (wrap the data in
    :class:`~manytask.training.distributed.ShardedBatches`), the balancer decides on
    global-batch information and gradients are averaged over ranks, so the run follows the
    single-process run on the global batches. Rank 0 alone writes logs and checkpoints; every
    rank reads ``run_dir`` on resume (a shared file system), whatever the number of processes
    that wrote it.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        balancer: Balancer | str = "equal",
        *,
        optimizer: OptimizerFactory | None = None,
        lr: float = 1e-3,
        mode: Mode = "exact",
        head_grad: HeadGrad = "own",
        run_dir: str | Path | None = None,
        log_format: LogFormat = "csv",
        log_every: int = 10,
        cosine_every: int | None = None,
        skip_nonfinite: bool = False,
        clip_grad_norm: float | None = None,
        keep_checkpoints: int = 2,
        progress: bool = True,
        device: str | torch.device = "cpu",
        flat_rho: float | None = None,
        tensorboard: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        if cosine_every is not None and cosine_every < 1:
            raise ValueError(f"cosine_every must be >= 1, got {cosine_every}")
        self.tasks = list(tasks)
        model.check_tasks(self.tasks)
        self._dist = context()
        self.balancer = make_balancer(balancer) if isinstance(balancer, str) else balancer
        if flat_rho is not None:
            _check_flat(flat_rho, self.balancer, mode, self._dist)
        self.flat_rho = flat_rho
        if tensorboard and run_dir is None:
            raise ValueError("tensorboard=True needs a run_dir (events go to run_dir/tensorboard)")
        self.tensorboard = tensorboard
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.balancer.setup([t.name for t in self.tasks])
        self.balancer.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.balancer.parameters() if p.requires_grad]
        self.optimizer = (optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(params)
        self.mode: Mode = mode
        self.head_grad: HeadGrad = head_grad
        if run_dir is not None:
            check_run_dir(run_dir)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.log_format: LogFormat = log_format
        self.log_every = log_every
        self.cosine_every = cosine_every
        self.skip_nonfinite = skip_nonfinite
        self.clip_grad_norm = clip_grad_norm
        self.keep_checkpoints = keep_checkpoints
        self.progress = progress
        self.step = 0
        self.epoch = 0
        self.skipped_steps = 0
        self.history: list[dict[str, Any]] = []
        self._shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        self._params = params
        self._model_params = [p for p in self.model.parameters() if p.requires_grad]
        self._last_x: Any = None

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch) -> dict[str, Any] | None:
        """One optimisation step; returns the log row, or ``None`` if the step was skipped."""
        x, targets = _to_device(batch[0], self.device), _to_device(batch[1], self.device)
        self._last_x = x  # the gate report at the end of the epoch reads this batch
        self.model.train()
        rng = _rng_state(self.device) if self.flat_rho is not None else None
        if self.flat_rho is not None:
            # flat regions run their own 1 + K forwards (same dropout draws, from this RNG
            # state); this one only finds which tasks are labelled, so it keeps no graph
            with torch.no_grad():
                outputs, features = self.model(x, return_features=True)
        else:
            outputs, features = self.model(x, return_features=True)
        losses = task_losses(self.tasks, outputs, targets)
        if not losses and self._dist is None:  # no labelled sample: nothing to learn from
            return None  # (a rank still joins the collectives: another may have labels)
        counts = {
            t.name: int(t.labelled(targets[t.name]).sum()) for t in self.tasks if t.name in losses
        }
        self.optimizer.zero_grad(set_to_none=True)
        gramian = None
        if (
            self.cosine_every is not None
            and self.balancer.requires == "losses"
            and (self.step + 1) % self.cosine_every == 0  # numbered as the step it logs
            and losses  # under torchrun: this rank's shard only, for the log
        ):
            gramian = task_gradients(
                list(losses.values()),
                feature_tensors(features),
                mode=self.mode,
                shared_params=self._shared,
            ).gramian
        try:
            if rng is not None:  # flat regions
                result = self._flat_backward(x, targets, rng)
            else:
                result = backward(
                    losses,
                    self.balancer,
                    features=features,
                    shared_params=self._shared,
                    mode=self.mode,
                    head_grad=self.head_grad,
                    step=self.step,
                    counts=counts,
                )
        except NonFiniteLossError:
            if not self.skip_nonfinite:
                raise
            self._skip("non-finite loss")
            return None
        if not result.tasks:  # distributed: no rank had a labelled sample
            self.optimizer.zero_grad(set_to_none=True)
            return None
        sync_gradients(self._model_params, self._dist)
        norm = torch.nn.utils.clip_grad_norm_(
            self._params, self.clip_grad_norm if self.clip_grad_norm else math.inf
        )
        if not bool(torch.isfinite(norm)):
            if not self.skip_nonfinite:
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    f"non-finite gradient at step {self.step} (losses {result.losses}); "
                    "no weight was updated"
                )
            self._skip("non-finite gradient")
            return None
        self.optimizer.step()
        self.step += 1
        row: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for task, value in result.losses.items():
            row[f"loss/{task}"] = value
            row[f"weight/{task}"] = result.weights[task]
        if gramian is not None:
            result.gramian = gramian
        cosine = result.cosine
        if cosine is not None:
            for i, a in enumerate(result.tasks):
                for j in range(i + 1, len(result.tasks)):
                    row[f"cos/{a}/{result.tasks[j]}"] = float(cosine[i, j])
        return row

    def _flat_backward(self, x: Any, targets: Any, rng: RngState) -> BackwardResult:
        """Task-based flat regions (:func:`manytask.flat.flat_backward`): 1 + K forwards."""

        def compute_losses() -> tuple[dict[str, Tensor], Any]:
            _set_rng_state(rng, self.device)
            outputs, features = self.model(x, return_features=True)
            return task_losses(self.tasks, outputs, targets), features

        assert self.flat_rho is not None
        return flat_backward(
            compute_losses, self.balancer, self._shared, rho=self.flat_rho,
            head_grad=self.head_grad,
        )

    def _report_experts(self, epoch: int) -> dict[str, Any] | None:
        """For a model with experts: each gate's mean weight per expert on the epoch's last
        batch, logged to ``experts.jsonl``; an expert no gate uses, or two experts with
        identical outputs, is warned about. One forward without gradients per epoch."""
        if self._last_x is None or not any(isinstance(m, ExpertSet) for m in self.model.modules()):
            return None
        report = expert_report(self.model, self._last_x)
        for line in report.messages():
            warnings.warn(f"epoch {epoch}: {line}", RuntimeWarning, stacklevel=3)
        entry = {"usage": report.usage, "unused": report.unused,
                 "identical": [list(p) for p in report.identical]}
        if self.run_dir is not None and self._is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "experts.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, **entry}) + "\n")
        return entry

    def _skip(self, why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        warnings.warn(f"step {self.step} skipped: {why}", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train_data: Iterable[Batch],
        epochs: int,
        *,
        val_data: Iterable[Batch] | None = None,
        resume: bool = False,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting those of a resumed run).

        With ``resume=True`` the latest checkpoint of ``run_dir`` is restored first (if there is
        one) and training continues after its epoch. Returns the per-epoch summaries.
        """
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        start = 0
        step_log, epoch_log = self._open_logs()
        if resume:
            if self.run_dir is None:
                raise ValueError("resume=True needs a run_dir")
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is not None:
                state = load_checkpoint(
                    ckpt, model=self.model, optimizer=self.optimizer, balancer=self.balancer
                )
                start, self.step = state["epoch"] + 1, state["step"]
                self.skipped_steps = state.get("skipped_steps", 0)
                if step_log is not None and epoch_log is not None:
                    step_log.truncate_after("step", self.step)
                    epoch_log.truncate_after("epoch", state["epoch"])
                    _truncate_jsonl(self.run_dir / "experts.jsonl", "epoch", state["epoch"])
        summaries: list[dict[str, Any]] = []
        # opened after the resume, dropping the events of steps the resumed run redoes
        board = self._open_board(purge_step=self.step + 1 if resume else None)
        try:
            for epoch in range(start, epochs):
                self.epoch = epoch
                set_epoch = getattr(train_data, "set_epoch", None) or getattr(
                    getattr(train_data, "sampler", None), "set_epoch", None
                )
                if callable(set_epoch):
                    set_epoch(epoch)
                began, first_step = time.perf_counter(), self.step
                bar = tqdm(
                    train_data,
                    desc=f"epoch {epoch + 1}/{epochs}",
                    # None: off when not a terminal; only rank 0 draws one
                    disable=None if self.progress and self._is_main else True,
                    leave=False,
                )
                seen = 0
                for batch in bar:
                    seen += 1
                    row = self.train_step(batch)
                    if row is None:
                        continue
                    if step_log is not None and (self.step % self.log_every == 0):
                        step_log.write(row)
                        if board is not None:
                            for key, value in row.items():
                                if key not in ("step", "epoch"):
                                    board.add_scalar(key, value, self.step)
                    bar.set_postfix(
                        {k[5:]: f"{v:.3f}" for k, v in row.items() if k.startswith("loss/")}
                    )
                if seen == 0:  # an empty data set; batches without labels are skipped, not this
                    raise ValueError(f"train_data yielded no batch in epoch {epoch}")
                self.balancer.end_epoch()
                summary: dict[str, Any] = {
                    "epoch": epoch,
                    "step": self.step,
                    "seconds": time.perf_counter() - began,
                    "steps": self.step - first_step,
                }
                if val_data is not None:
                    summary["val"] = self.evaluate(val_data)
                    if epoch_log is not None:
                        self._write_metrics(epoch_log, epoch, "val", summary["val"])
                    if board is not None:
                        for task, metrics in summary["val"].items():
                            for metric, value in metrics.items():
                                board.add_scalar(f"val/{task}/{metric}", value, epoch)
                        board.flush()
                experts = self._report_experts(epoch)
                if experts is not None:
                    summary["experts"] = experts
                summaries.append(summary)
                if self.run_dir is not None and self._is_main:
                    save_checkpoint(
                        self.run_dir,
                        epoch,
                        model=self.model,
                        optimizer=self.optimizer,
                        balancer=self.balancer,
                        keep=self.keep_checkpoints,
                        info={"step": self.step, "skipped_steps": self.skipped_steps},
                    )
                barrier(self._dist)  # no rank runs ahead of the checkpoint it could resume from
        finally:  # events already logged survive an error
            if board is not None:
                board.close()
        self.history = summaries
        return summaries

    def _open_board(self, purge_step: int | None = None) -> Any:
        if not self.tensorboard or self.run_dir is None or not self._is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install tensorboard"
            ) from err
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    @property
    def _is_main(self) -> bool:
        return self._dist is None or self._dist.is_main

    def _open_logs(self) -> tuple[RunLog | None, RunLog | None]:
        if self.run_dir is None or not self._is_main:
            return None, None
        names = [t.name for t in self.tasks]
        cols = ["step", "epoch"]
        cols += [f"loss/{n}" for n in names] + [f"weight/{n}" for n in names]
        cols += [f"cos/{a}/{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
        step_log = RunLog(self.run_dir / "steps", cols, self.log_format)
        epoch_log = RunLog(
            self.run_dir / "metrics", ["epoch", "split", "task", "metric", "value"], self.log_format
        )
        return step_log, epoch_log

    @staticmethod
    def _write_metrics(log: RunLog, epoch: int, split: str, results: Results) -> None:
        for task, metrics in results.items():
            for metric, value in metrics.items():
                log.write(
                    {"epoch": epoch, "split": split, "task": task, "metric": metric, "value": value}
                )

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self, data: Iterable[Batch]) -> Results:
        """Per-task loss and metrics over ``data`` (labelled samples only)."""
        from ..metrics import TaskEvaluator  # streaming torchmetrics, nothing gathered

        self.model.eval()
        evaluator = TaskEvaluator(self.tasks, self.device)
        for x, targets in data:
            evaluator.update(self.model(_to_device(x, self.device)), targets)
        return evaluator.compute()


RngState = tuple[Tensor, Tensor | None]


def _rng_state(device: torch.device) -> RngState:
    """The CPU generator's state, and the accelerator's when training on CUDA."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _check_flat(rho: float, balancer: Balancer, mode: str, dist: Any) -> None:
    if not rho >= 0:
        raise ValueError(f"flat_rho must be >= 0, got {rho}")
    check_flat_method(balancer, "flat_rho")
    if mode != "exact":
        raise ValueError("flat_rho perturbs the shared parameters: it needs mode='exact'")
    if dist is not None:
        raise ValueError("flat_rho is not supported under torchrun (one process only)")


def _truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Drop the lines of ``path`` whose ``key`` exceeds ``last`` (epochs a resume redoes)."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # a write cut off by a kill: drop the partial line
        lines.pop()
        text = ""  # forces the rewrite below

    def keep(line: str) -> bool:
        try:
            return bool(line.strip()) and json.loads(line)[key] <= last
        except (json.JSONDecodeError, KeyError, TypeError):
            return False

    kept = [ln for ln in lines if keep(ln)]
    if len(kept) != len(lines) or not text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(path)
