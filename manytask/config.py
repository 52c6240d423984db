"""The training configuration: one dataclass, read from YAML and/or flags, validated strictly."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .registry import short


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or range."""


@dataclass
class TrainConfig:
    """Everything ``manytask train`` needs. Each field is a YAML key and a ``--flag``."""

    data: str = "multidigits"
    # data: files: the files, columns, splits and tasks (manytask.data.declared.spec)
    dataset: dict[str, Any] | None = None
    tasks: list[str] | None = None
    train_size: int = 6000
    missing_rate: float = 0.0
    arch: str = "hard_sharing"
    arch_params: dict[str, Any] = field(default_factory=dict)
    # the trunk widths of architectures with a `hidden` parameter (default: their own)
    hidden: list[int] | None = None
    balancer: str = "equal"
    balancer_params: dict[str, Any] = field(default_factory=dict)
    mode: Literal["exact", "feature"] = "exact"
    head_grad: Literal["own", "weighted"] = "own"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    # optimiser by name (sgd, adam, adamw, rmsprop, adagrad, torch.optim.NAME) + its keywords
    optimizer: str = "adam"
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    weight_decay: float | None = None  # shorthand for optimizer_params.weight_decay
    head_lr: float | None = None  # the heads' learning rate (default: lr)
    balancer_lr: float | None = None  # a method's own parameters' learning rate (default: lr)
    clip_grad_norm: float | None = None
    # learning-rate schedule: constant | cosine | linear | step | plateau, after `warmup`
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    warmup: int = 0  # steps (or epochs, with schedule_interval: epoch) of linear warm-up
    schedule_interval: Literal["step", "epoch"] = "step"
    schedule_steps: int | None = None  # the schedule's length (default: the whole run)
    accumulate: int = 1  # micro-batches per optimiser step (exactly one batch N times larger)
    # free: each micro-batch's graph freed (one extra forward for loss level and feature
    # mode); graphs: all N kept until one backward (the large batch's memory)
    accumulate_memory: Literal["free", "graphs"] = "free"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 with a grad scaler
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto
    # under torchrun: the shared part sharded with FSDP2 (manytask.training.sharding)
    shard: Literal["none", "fsdp"] = "none"
    seed: int = 0
    run_dir: str | None = None
    resume: bool = False
    resume_if_exists: bool = False
    overwrite: bool = False
    # follow links that lead out of the folders files are read from (the run folder's
    # checkpoints, data files named relative to data_root, a datasets folder): refused if not
    allow_outside_links: bool = False
    log_format: Literal["csv", "jsonl"] = "csv"
    log_every: int = 10
    skip_nonfinite: bool = False
    progress: bool = True
    cosine_every: int | None = None
    flat_rho: float | None = None
    tensorboard: bool = False
    # the main validation score ("mean" of the tasks' main metrics by direction, "loss",
    # or "TASK/METRIC"), followed by early stopping and the best checkpoint
    monitor: str = "mean"
    early_stopping: int | None = None  # patience in epochs (none: train every epoch)
    min_delta: float = 0.0
    keep_best: bool = True  # keep the best epoch's checkpoint; test metrics are taken there
    # data: files: the folder the dataset: section's file names are under
    data_root: str | None = None
    # text columns: the frozen MiniLM's cached embeddings; sources mixed in batches
    cache_dir: str = "runs/cache"
    tasks_per_batch: int = 4
    task_temperature: float = 2.0
    finetune_layers: int = 0
    finetune_lr: float | None = None
    # data: files with text sources: a multi-task adapter on the frozen MiniLM (lora, moa,
    # align_lora, ...) trained on the tokens; its parameters; the modules it adapts
    adapter: str | None = None
    adapter_params: dict[str, Any] = field(default_factory=dict)
    adapter_targets: list[str] | None = None

    def __post_init__(self) -> None:
        choices = {
            "mode": ("exact", "feature"),
            "head_grad": ("own", "weighted"),
            "log_format": ("csv", "jsonl"),
            "schedule_interval": ("step", "epoch"),
            "precision": ("fp32", "bf16", "fp16"),
            "accumulate_memory": ("free", "graphs"),
            "shard": ("none", "fsdp"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{key} must be one of {list(allowed)}, got {short(getattr(self, key))}"
                )
        _check_types(self)
        for f in dataclasses.fields(self):  # nan and inf pass every range test below
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        positive = ("epochs", "batch_size", "train_size", "log_every")
        for key in positive:
            if getattr(self, key) < (0 if key == "epochs" else 1):
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.missing_rate < 1:
            raise ConfigError(f"missing_rate must lie in [0, 1), got {self.missing_rate}")
        if self.hidden is not None and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise ConfigError(
                f"hidden must be a non-empty list of positive widths, got {self.hidden}"
            )
        if self.cosine_every is not None and self.cosine_every < 1:
            raise ConfigError(f"cosine_every must be >= 1, got {self.cosine_every}")
        if self.tasks_per_batch < 1:
            raise ConfigError(f"tasks_per_batch must be positive, got {self.tasks_per_batch}")
        if not self.task_temperature > 0:
            raise ConfigError(f"task_temperature must be > 0, got {self.task_temperature}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds; torch's would wrap a larger one
            raise ConfigError(f"seed must lie in [0, 2**32), got {short(self.seed)}")
        if self.tasks is not None:
            twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
            if twice:
                raise ConfigError(f"tasks: {short(twice[0])} is given twice")
        if (self.data == "files") != (self.dataset is not None):
            raise ConfigError("data: files needs a dataset: section (and dataset: needs "
                              "data: files)")
        if self.finetune_layers < 0:
            raise ConfigError(f"finetune_layers must be >= 0, got {self.finetune_layers}")
        if self.finetune_layers > 0 and self.data != "files":
            raise ConfigError("finetune_layers applies to data: files (text sources) only")
        if self.adapter is not None and self.data != "files":
            raise ConfigError(f"adapter applies to data: files (text sources) only, got "
                              f"data: {self.data}")
        if self.adapter is not None and self.finetune_layers > 0:
            raise ConfigError("adapter and finetune_layers exclude each other (the adapter "
                              "trains on a frozen encoder)")
        if self.adapter is None and (self.adapter_params or self.adapter_targets):
            raise ConfigError("adapter_params and adapter_targets need adapter (a method of "
                              "manytask.adapters)")
        for key in ("finetune_lr", "head_lr", "balancer_lr", "clip_grad_norm"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.accumulate < 1:
            raise ConfigError(f"accumulate must be >= 1, got {self.accumulate}")
        if not re.fullmatch(r"cpu|cuda|cuda:\d+|mps|auto", self.device):
            raise ConfigError(f"device must be cpu, cuda, cuda:N, mps or auto, got {self.device!r}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ConfigError(f"schedule_steps must be >= 1, got {self.schedule_steps}")
        if self.flat_rho is not None and not self.flat_rho >= 0:
            raise ConfigError(f"flat_rho must be >= 0, got {self.flat_rho}")
        if self.shard == "fsdp":
            _check_fsdp(self)
        if self.run_dir == "":  # an empty path means no run directory, not the current one
            self.run_dir = None
        if self.resume and not self.run_dir:
            raise ConfigError("resume needs run_dir")
        if self.resume_if_exists and not self.run_dir:
            raise ConfigError("resume_if_exists needs run_dir")
        if sum((self.resume, self.resume_if_exists, self.overwrite)) > 1:
            raise ConfigError("resume, resume_if_exists and overwrite exclude each other")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early_stopping must be >= 1 epoch, got {self.early_stopping}")
        if not self.min_delta >= 0:
            raise ConfigError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.run_dir:
            check_run_dir(self.run_dir)


# Settings that may differ when a run is resumed (recorded in config_history.jsonl); every
# other key defines the run and must match the recorded config.yaml.
CHANGEABLE = frozenset({
    "epochs", "run_dir", "resume", "resume_if_exists", "overwrite", "log_every", "progress",
    "tensorboard", "cosine_every", "skip_nonfinite", "early_stopping", "min_delta",
    "keep_best", "data_root", "cache_dir", "schedule_steps",
    "device", "allow_outside_links", "shard", "accumulate_memory",
})


def _check_fsdp(cfg: TrainConfig) -> None:
    """The options ``shard: fsdp`` cannot be combined with (the process count is checked
    when the run starts, :func:`manytask.run.validate_config`)."""
    if cfg.cosine_every is not None:
        raise ConfigError("shard: fsdp needs every rank to run the same backward passes; "
                          "cosine_every computes task gradients on the ranks with labels only "
                          "(leave it unset)")
    if cfg.flat_rho is not None:
        raise ConfigError("shard: fsdp runs under torchrun, flat_rho in one process only")
    if cfg.precision == "fp16":
        raise ConfigError("shard: fsdp with precision: fp16: torch's gradient scaler cannot "
                          "unscale sharded and plain gradients together (use bf16)")
    if cfg.adapter is not None:
        raise ConfigError("shard: fsdp shards the model's shared module; an adapter's shared "
                          "parameters are spread through the frozen encoder (leave shard: none)")


def check_run_dir(run_dir: str | Path) -> None:
    """Refuse a run directory that could never be created: it, or a parent, is a file."""
    path = Path(run_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is" if folder == path else f"lies under {str(folder)!r}, which is"
                raise ConfigError(f"run_dir {short(str(run_dir))} {what} a file, not a folder")
            return


def _accepts(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_accepts(inner, v) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_types(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _accepts(hints[f.name], value):
            raise ConfigError(
                f"{f.name} must be of type {hints[f.name]}, got {short(value)} "
                f"({type(value).__name__})"
            )


def config_from_mapping(values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig`; an unknown key is an error that lists the valid ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known, key=str)  # YAML keys may be numbers, too
    if unknown:
        hints = [difflib.get_close_matches(str(k), sorted(known), n=1) for k in unknown]
        hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
        raise ConfigError(
            f"{source}: unknown key(s) {short(unknown)}{hint}; valid keys: {sorted(known)}"
        )
    try:
        return TrainConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file (``safe_load`` only) and apply ``overrides`` on top."""
    from .files import UnsafeFileError, load_yaml

    path = Path(path)
    try:  # bounded: a regular file, no alias bomb, no deep nesting
        values = load_yaml(path, what="config") or {}
    except UnsafeFileError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    if not overrides:
        return config_from_mapping(values, source=str(path))
    try:
        return config_from_mapping({**values, **overrides},
                                   source=f"command line (over {path})")
    except ConfigError:
        # Name where the error is: the file itself (a flag may override a wrong value in
        # it, so the file alone is judged only when the whole is refused), else the flags.
        config_from_mapping(values, source=str(path))
        raise
