"""The Trainer: fit and evaluate a multi-task model with any balancer.

It does what a user's own loop would do with :func:`manytask.backward`, plus the chores:
per-task metrics, a progress bar, CSV or JSON-lines logs, an atomic checkpoint each epoch and
exact resume (on CPU, a run stopped and resumed ends with the same weights, bit for bit, as one
that never stopped).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from ..balancers import Balancer, make_balancer
from ..config import check_run_dir
from ..engine.accumulate import NotSeparable
from ..engine.backward import (
    BackwardResult,
    GradientOverflowError,
    HeadGrad,
    NonFiniteLossError,
    backward,
)
from ..engine.flat import flat_backward
from ..engine.gradients import MODES, Mode, feature_tensors, task_gradients
from ..models.base import MultiTaskModel
from ..models.experts import ExpertSet
from ..models.routing import expert_report
from ..tasks import Task, task_losses
from .accumulation import FreeStep, Memory, check_memory, kind_for
from .callbacks import BestCheckpoint, Callback, check_monitor
from .checkpoint import (
    BEST,
    atomic_write_text,
    latest_checkpoint,
    load_model_weights,
)
from .devices import Precision, autocast, check_precision, resolve_device
from .distributed import context, sync_gradients
from .evaluation import Results, evaluate, to_device
from .logs import LogFormat, RunLog
from .loop import fit_loop, open_logs
from .optim import SCHEDULES, Interval, Schedule, build_optimizer, param_groups
from .run_folder import Resume, open_run
from .sharding import (
    Shard,
    WholeState,
    check_shard,
    clip_grad_norm,
    load_targets,
    shard_shared,
)
from .support import (
    RngState,
    backward_auxiliary,
    check_flat,
    mean_auxiliary,
    rng_state,
    set_rng_state,
)

Batch = tuple[Any, Mapping[str, Tensor]]
OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


class Trainer:
    """Train ``model`` on ``tasks`` with ``balancer``.

    Args:
        model: a :class:`~manytask.models.MultiTaskModel` with one head per task.
        tasks: the tasks, in the order used for logs.
        balancer: a :class:`~manytask.balancers.Balancer` or a registry name.
        optimizer: an optimiser name of :data:`~manytask.training.optim.OPTIMIZERS` (``sgd``,
            ``adam``, ``adamw``, ..., or ``torch.optim.NAME``), or a factory
            ``params -> Optimizer``. The balancer's own parameters (uncertainty weighting's
            log-variances, ...) are included.
        optimizer_params: keyword arguments of the named optimiser (``momentum``,
            ``nesterov``, ``weight_decay``, ``betas``, ...).
        lr: the learning rate (of every parameter group not named in ``lrs``).
        lrs: other learning rates by role: ``{"heads": ..., "balancer": ..., "encoder": ...,
            "shared": ...}`` (:func:`~manytask.training.optim.param_groups`).
        schedule: a learning-rate schedule of :data:`~manytask.training.optim.SCHEDULES`
            (``constant``, ``cosine``, ``linear``, ``step``, ``plateau``) with
            ``schedule_params``, after ``warmup`` steps (or epochs) of linear warm-up, stepped
            every ``schedule_interval`` (``"step"`` or ``"epoch"``); ``schedule_steps`` its
            length (default: the epochs of :meth:`fit` times the batches per epoch).
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
        device: where to train: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto`` or a
            ``torch.device`` (:mod:`manytask.training.devices`); model and method state go
            there, and each batch.
        accumulate: take one optimiser step per this many micro-batches, exactly as one
            batch of all their samples.
        accumulate_memory: ``"free"`` (default): each micro-batch's graph is freed before
            the next forward (:mod:`~manytask.training.accumulation`; one extra forward per
            micro-batch for loss-level methods and feature mode, none in exact mode);
            ``"graphs"``: the N graphs are kept until one backward (:meth:`_losses`; the
            memory of the large batch, no extra forward). A model whose heads cannot be
            separated from its trunk, or with FSDP-sharded parameters, falls back to
            ``"graphs"`` with a warning.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (forward and losses under
            ``torch.autocast``; fp16 with a ``GradScaler`` whose scale the method never sees,
            and a step whose scaled gradients overflow skipped before the method decides).
        flat_rho: if set, task-based flat regions (:func:`manytask.flat_backward`) with this
            SAM radius around the gradient-level ``balancer``: each step re-runs the forward
            once per task at that task's perturbed point (1 + K forwards, about 1 + K
            backwards), with the same dropout draws. Exact mode, one process.
        tensorboard: also write the step log and the epoch metrics as TensorBoard scalars in
            ``run_dir/tensorboard``, both on the global-step axis (needs ``tensorboard``).
        callbacks: :class:`~manytask.training.callbacks.Callback` objects (early stopping,
            best checkpoint, your own), called in order at each hook.
        monitor: the main validation score logged each epoch (see
            :func:`~manytask.training.callbacks.main_score`): ``"mean"``, ``"loss"`` or
            ``"TASK/METRIC"``.
        allow_outside_links: follow checkpoint folders and files of ``run_dir`` that are
            links out of it (refused by default, naming the link).
        shard: ``"none"``, or ``"fsdp"`` under ``torchrun`` (2 or more processes): the
            model's shared part sharded with FSDP2 (:mod:`~manytask.training.sharding`);
            checkpoints and saved models stay whole.

    Progress: on a terminal a bar per epoch, elsewhere plain lines; one line of validation
    metrics per epoch, printed (unless ``progress=False``) and appended to ``run_dir/train.log``.

    Auxiliary losses: a model whose training forward computes terms of its own objective
    (:meth:`~manytask.models.MultiTaskModel.auxiliary_losses`: Align-LoRA's alignment, MoA's
    routing loss, weighted by the adapter's declared parameters) has them added to the
    objective at each step, as the papers add them: ``sum_k w_k L_k + sum_a L_a``. They are
    not tasks: the balancer never sees them (no weight, no Gramian row); their gradient is
    backpropagated once, unweighted, and added to the one the balancer forms from the task
    losses, into every parameter they reach. Logged as ``aux/NAME`` in each step row and as
    each epoch's mean in the summary (``"aux"``). With ``accumulate``, each name's mean over
    the micro-batches; not with ``flat_rho`` (whose 1 + K forwards would each compute them).

    Distributed: when ``torch.distributed`` is initialised with several processes (e.g. under
    ``torchrun``), each rank trains on its shard of every global batch (wrap the data in
    :class:`~manytask.training.distributed.ShardedBatches`), the balancer decides on
    global-batch information and gradients are averaged over ranks, so the run follows the
    single-process run on the global batches. Rank 0 alone writes logs and checkpoints; every
    rank reads ``run_dir`` on resume (a shared file system), whatever the number of processes
    that wrote it. With ``shard="fsdp"`` the shared part is sharded across the ranks; the
    checkpoints are gathered whole, the same files as without sharding.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        balancer: Balancer | str = "equal",
        *,
        optimizer: OptimizerFactory | str | None = "adam",
        optimizer_params: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
        lrs: Mapping[str, float] | None = None,
        schedule: str = "constant",
        schedule_params: Mapping[str, Any] | None = None,
        warmup: int = 0,
        schedule_interval: Interval = "step",
        schedule_steps: int | None = None,
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
        accumulate: int = 1,
        accumulate_memory: Memory = "free",
        precision: Precision = "fp32",
        callbacks: Sequence[Callback] = (),
        monitor: str = "mean",
        allow_outside_links: bool = False,
        shard: Shard = "none",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        if cosine_every is not None and cosine_every < 1:
            raise ValueError(f"cosine_every must be >= 1, got {cosine_every}")
        self.tasks = list(tasks)
        model.check_tasks(self.tasks)
        self.aux_names = tuple(model.auxiliary_loss_names())
        if flat_rho is not None and self.aux_names:
            raise ValueError(f"flat_rho re-runs the forward once per task, where the model's "
                             f"auxiliary losses {list(self.aux_names)} would be computed again "
                             "and dropped: train this model without flat_rho")
        check_monitor(monitor, self.tasks)
        self.monitor = monitor
        self.allow_outside_links = allow_outside_links
        self.callbacks = list(callbacks)
        self.should_stop = False  # a callback sets it to end training after this epoch
        self.protected_epochs: set[int] = set()  # checkpoints the clean-up keeps
        self._dist = context()
        self.balancer = make_balancer(balancer) if isinstance(balancer, str) else balancer
        if flat_rho is not None:
            check_flat(flat_rho, self.balancer, mode, self._dist)
        self.flat_rho = flat_rho
        if tensorboard and run_dir is None:
            raise ValueError("tensorboard=True needs a run_dir (events go to run_dir/tensorboard)")
        self.tensorboard = tensorboard
        self.device = resolve_device(device)
        check_precision(precision, self.device)
        self.precision: Precision = precision
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        if flat_rho is not None and (accumulate > 1 or precision != "fp32"):
            raise ValueError("flat_rho re-runs each batch's forward in fp32: it takes neither "
                             "accumulate nor another precision")
        self.accumulate = accumulate
        check_memory(accumulate_memory)
        self.accumulate_memory: Memory = accumulate_memory
        # fp16: a gradient scaler (its scale removed before any decision, see backward()).
        # Under torchrun every rank takes the same skip: an overflow on one rank reaches the
        # others through the reduced Gramian or Jacobian (GradientOverflowError) or through
        # the averaged gradients (a non-finite norm after sync_gradients).
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self.overflow_steps = 0
        self.model = model.to(self.device)
        self.balancer.setup([t.name for t in self.tasks])
        self.balancer.to(self.device)
        sharded = check_shard(shard, self._dist, cosine_every=cosine_every,
                              precision=precision)
        if sharded:  # before the optimizer, which must hold the sharded parameters
            assert self._dist is not None
            shard_shared(self.model, self.device, self._dist)
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += [p for p in self.balancer.parameters() if p.requires_grad]
        if optimizer is None or isinstance(optimizer, str):  # None: Adam, as it always was
            groups = param_groups(self.model, self.balancer, lr, lrs)
            self.optimizer = build_optimizer(optimizer or "adam", groups, lr, optimizer_params)
        elif lrs or optimizer_params:
            raise ValueError("lrs and optimizer_params apply to a named optimizer, not to a "
                             "factory (give the factory its own groups)")
        else:
            self.optimizer = optimizer(params)
        self.whole_state = (WholeState(self.model, self.optimizer, self._dist)
                            if sharded and self._dist is not None else None)
        SCHEDULES.validate(schedule, schedule_params)  # built by fit, which knows the length
        self._schedule_spec = (schedule, dict(schedule_params or {}), warmup,
                               schedule_interval, schedule_steps)
        self.schedule: Schedule | None = None
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
        self._params = params
        self._model_params = [p for p in self.model.parameters() if p.requires_grad]
        self._last_x: Any = None
        self._last_targets: Any = None
        self._last_aux: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch | Sequence[Batch]) -> dict[str, Any] | None:
        """One optimisation step on one batch, or (with ``accumulate`` > 1) on a list of
        micro-batches; returns the log row, or ``None`` if the step was skipped."""
        micro = cast(list[Batch], list(batch) if self.accumulate > 1 else [batch])
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        scale = 1.0 if self.scaler is None else float(self.scaler.get_scale())
        cosine_due = (self.cosine_every is not None and self.balancer.requires == "losses"
                      and (self.step + 1) % self.cosine_every == 0)  # numbered as the step it logs
        rng = rng_state(self.device) if self.flat_rho is not None else None
        free = None
        if self.accumulate_memory == "free" and len(micro) > 1:
            free = FreeStep(self, micro, kind_for(self.balancer, self.mode, cosine_due), scale)
            try:  # pass 1: one micro-batch's graph at a time (see .accumulation)
                losses, features, counts = free.collect()
            except NotSeparable as err:
                warnings.warn(f"accumulate_memory='free' falls back to 'graphs': {err}",
                              RuntimeWarning, stacklevel=2)
                self.accumulate_memory, free = "graphs", None
            except (NonFiniteLossError, GradientOverflowError) as err:
                self._not_stepped(err, scale)
                return None
        if free is None and rng is not None:
            # flat regions run their own 1 + K forwards (same dropout draws, from this RNG
            # state); this one only finds which tasks are labelled, so it keeps no graph
            with torch.no_grad():
                losses, features, counts = self._losses(micro)
        elif free is None:
            losses, features, counts = self._losses(micro)
        if not losses and self._dist is None:  # no labelled sample: nothing to learn from
            return None  # (a rank still joins the collectives: another may have labels)
        x, targets = self._last_x, self._last_targets
        gramian = None
        if cosine_due and losses:  # under torchrun: this rank's shard only, for the log
            gramian = task_gradients(
                list(losses.values()),
                feature_tensors(features),
                mode=self.mode,
                shared_params=self._shared,
            ).gramian
        if self.scaler is not None and free is None:  # fp16: scaled losses (backward
            losses = {k: self.scaler.scale(v) for k, v in losses.items()}  # divides it out)
        aux = self._last_aux
        try:
            if aux and free is None:  # outside the balancing: added to the gradient the
                backward_auxiliary(aux, scale, self.step)  # method forms (free: pass 1 or 2)
            if rng is not None:  # flat regions
                result = self._flat_backward(x, targets, rng)
            else:
                result = backward(
                    losses,
                    self.balancer,
                    loss_scale=scale,
                    features=features,
                    shared_params=self._shared,
                    mode=self.mode,
                    head_grad=self.head_grad,
                    step=self.step,
                    counts=counts,
                )
                if free is not None:  # pass 2: the decision into each micro-batch's graph,
                    del losses, features  # after the surrogate graph is freed
                    free.replay()
        except (NonFiniteLossError, GradientOverflowError) as err:
            self._not_stepped(err, scale)
            return None
        if not result.tasks:  # distributed: no rank had a labelled sample
            self.optimizer.zero_grad(set_to_none=True)
            return None
        sync_gradients(self._model_params, self._dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = clip_grad_norm(  # torch's, unless some gradients are sharded
            self._params, self.clip_grad_norm if self.clip_grad_norm else math.inf
        )
        if not bool(torch.isfinite(norm)) and self.scaler is not None:
            self._overflow(scale, unscaled=True)
            return None
        if not bool(torch.isfinite(norm)):
            if not self.skip_nonfinite:
                self.optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(
                    f"non-finite gradient at step {self.step} (losses {result.losses}); "
                    "no weight was updated"
                )
            self._skip("non-finite gradient")
            return None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        if self.schedule is not None:
            self.schedule.after_step()
        row: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for task, value in result.losses.items():
            row[f"loss/{task}"] = value
            row[f"weight/{task}"] = result.weights[task]
        for name, term in aux.items():
            row[f"aux/{name}"] = float(term.detach())
        if gramian is not None:
            result.gramian = gramian
        cosine = result.cosine
        if cosine is not None:
            for i, a in enumerate(result.tasks):
                for j in range(i + 1, len(result.tasks)):
                    row[f"cos/{a}/{result.tasks[j]}"] = float(cosine[i, j])
        return row

    def _not_stepped(self, err: Exception, scale: float) -> None:
        """An fp16 overflow (before the method decided: its state is untouched) or a
        non-finite loss (raised again unless ``skip_nonfinite``): the step is skipped."""
        if isinstance(err, GradientOverflowError):
            self._overflow(scale, unscaled=False)
        elif not self.skip_nonfinite:
            raise err
        else:
            self._skip("non-finite loss")

    def _losses(
        self, micro: Sequence[Batch]
    ) -> tuple[dict[str, Tensor], Any, dict[str, int]]:
        """Per-task losses of the micro-batches together, as of one batch of all their samples.

        A task's loss is the mean over its labelled samples, so that of the union is the mean
        of the micro-batches' losses weighted by their labelled counts n_m / n (exact, for
        every method: loss-level ones see the large batch's losses, gradient-level ones its
        per-task gradients and Gramian). The N graphs are kept until the one backward.
        """
        parts, aux = [], []
        for x, targets in micro:
            x, targets = to_device(x, self.device), to_device(targets, self.device)
            with autocast(self.device, self.precision):
                outputs, features = self.model(x, return_features=True)
                losses = task_losses(self.tasks, outputs, targets)
            aux.append(self.model.auxiliary_losses())  # now: an adapter's next forward needs it
            counts = {t.name: int(t.labelled(targets[t.name]).sum())
                      for t in self.tasks if t.name in losses}
            parts.append((losses, features, counts))
        self._last_x, self._last_targets = x, targets  # the gate report reads the last batch
        self._last_aux = mean_auxiliary(aux, self.aux_names)
        if len(parts) == 1:
            return parts[0]
        total: dict[str, int] = {}
        for _, _, counts in parts:
            for name, n in counts.items():
                total[name] = total.get(name, 0) + n
        combined = {
            t.name: sum(
                (ls[t.name] * (c[t.name] / total[t.name]) for ls, _, c in parts if t.name in ls),
                torch.zeros((), device=self.device),
            )
            for t in self.tasks if t.name in total
        }
        features = [f for _, feats, _ in parts for f in feature_tensors(feats)]
        return combined, features, total

    def _flat_backward(self, x: Any, targets: Any, rng: RngState) -> BackwardResult:
        """Task-based flat regions (:func:`manytask.engine.flat.flat_backward`): 1 + K forwards."""

        def compute_losses() -> tuple[dict[str, Tensor], Any]:
            set_rng_state(rng, self.device)
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

    def _overflow(self, scale: float, *, unscaled: bool) -> None:
        """fp16: the scaled gradients overflowed. No weight moves, the scale is reduced."""
        self.optimizer.zero_grad(set_to_none=True)
        assert self.scaler is not None
        if unscaled:
            self.scaler.update()  # unscale_ recorded the overflow: the scaler backs off
        else:
            self.scaler.update(scale * self.scaler.get_backoff_factor())
        self.overflow_steps += 1

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
        resume: Resume = False,
        overwrite: bool = False,
        config: Mapping[str, Any] | None = None,
        changeable: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting those of a resumed run).

        ``run_dir`` rules (:mod:`manytask.training.run_folder`): a folder that holds anything
        is refused unless ``resume`` (``True``: its latest checkpoint must exist;
        ``"if_exists"``: resume if there is one, else start afresh) or ``overwrite``; the
        folder is locked while training; ``config`` (the run's settings, if given) is written
        to ``config.yaml``, and on resume must equal the recorded one except for the keys in
        ``changeable``. Returns the per-epoch summaries.
        """
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if resume and self.run_dir is None:
            raise ValueError("resume needs a run_dir")
        lock = None
        resuming = False
        if self.run_dir is not None and self._is_main:
            plan, lock = open_run(self.run_dir, resume=resume, overwrite=overwrite,
                                  config=config, changeable=changeable,
                                  allow_outside_links=self.allow_outside_links)
            resuming = plan.resume
        elif self.run_dir is not None and resume:  # other ranks: rank 0 checked the folder
            resuming = latest_checkpoint(
                self.run_dir, allow_outside=self.allow_outside_links) is not None
        try:
            return fit_loop(self, train_data, epochs, val_data, resuming)
        finally:
            if lock is not None:
                lock.release()

    def mark_best(self, epoch: int) -> None:
        """Point ``checkpoints/best`` at the checkpoint of ``epoch`` (kept from clean-up)."""
        if self.run_dir is None or not self._is_main:
            return
        root = self.run_dir / "checkpoints"
        if (root / f"epoch-{epoch:04d}").is_dir():
            atomic_write_text(root / BEST, f"epoch-{epoch:04d}")

    def restore_best(self) -> int | None:
        """Load the weights of the best validation epoch (kept by a :class:`BestCheckpoint`
        callback) into the model; return that epoch, or ``None`` when there is none."""
        best = next((cb for cb in self.callbacks if isinstance(cb, BestCheckpoint)), None)
        if best is None or best.best_epoch is None:
            return None
        if self.run_dir is None:
            assert best.weights is not None
            self.model.load_state_dict(best.weights)
        else:
            path = self.run_dir / "checkpoints" / f"epoch-{best.best_epoch:04d}"
            load_model_weights(path, load_targets(self)[0],
                               allow_outside=self.allow_outside_links)
        return best.best_epoch

    @property
    def _shared(self) -> list[torch.nn.Parameter]:
        # read after the forward: sharded, these are the gathered parameters FSDP swapped in
        return [p for p in self.model.shared_parameters() if p.requires_grad]

    @property
    def _is_main(self) -> bool:
        return self._dist is None or self._dist.is_main

    def _open_logs(self) -> tuple[RunLog | None, RunLog | None]:
        return open_logs(self)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, data: Iterable[Batch]) -> Results:
        """Per-task loss and metrics over ``data`` (labelled samples only)."""
        return evaluate(self.model, self.tasks, data, self.device, self.precision)
