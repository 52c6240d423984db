"""Run a training configuration end to end: data, model, Trainer, test metrics."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .balancers import make_balancer
from .balancers.registry import BALANCERS
from .config import CHANGEABLE, ConfigError, TrainConfig
from .files import atomic_write_text
from .finite import check_state
from .models import ARCHITECTURES, MultiTaskModel, make_model
from .registry import Registry, RegistryError
from .tasks import Task
from .training import Trainer
from .training.callbacks import BestCheckpoint, Callback, EarlyStopping
from .training.devices import resolve_device
from .training.distributed import ShardedBatches, init_from_env
from .training.optim import SCHEDULES, check_optimizer
from .training.pretrained import save_pretrained
from .training.run_folder import Resume, plan_run


@dataclass
class Prepared:
    """A data set ready for training: tasks, batch iterables and the input width."""

    tasks: list[Task]
    train: Any
    val: Any
    test: Any
    in_features: int
    # tabular data: builds the embedding + dense input layer the architectures start with
    input_layer: Callable[[], nn.Module] | None = None
    # text with fine-tuned top layers (its shared part is MiniLM's top layers) or with an
    # adapter on the frozen MiniLM: builds the model
    model_factory: Callable[..., MultiTaskModel] | None = None
    # how the input layer is built, for manytask.json (tabular: its vocabulary sizes)
    input_spec: dict[str, Any] | None = None
    # what the inputs must be, for manytask.json
    preprocessing: dict[str, Any] | None = None
    # files written into the run folder after training (the fitted preprocessing)
    artifacts: dict[str, str] | None = None


@dataclass(frozen=True)
class DataSet:
    """A data set chosen by ``data:``: what prepares it, and its tasks when none are named."""

    prepare: Callable[[TrainConfig], Prepared]
    default_tasks: Callable[[TrainConfig], tuple[str, ...]]


def task_names(cfg: TrainConfig) -> tuple[str, ...]:
    """The tasks a run trains: ``cfg.tasks``, or the data set's default tasks."""
    if cfg.tasks:
        return tuple(cfg.tasks)
    return DATASETS.get(cfg.data).default_tasks(cfg)


def _declared_tasks(cfg: TrainConfig) -> tuple[str, ...]:
    from .data.declared import parse_dataset

    return tuple(t.name for t in parse_dataset(
        cfg.dataset, cfg.data_root or ".", allow_outside_links=cfg.allow_outside_links).tasks)


def _multidigits(cfg: TrainConfig) -> Prepared:
    from .data import MultiDigits, TensorBatches

    names = task_names(cfg)
    splits = {
        split: MultiDigits(
            split=split,
            tasks=names,
            seed=cfg.seed,
            size=cfg.train_size if split == "train" else None,
            missing_rate=cfg.missing_rate if split == "train" else 0.0,
        )
        for split in ("train", "val", "test")
    }
    batches = {
        split: TensorBatches.from_dataset(
            ds, cfg.batch_size, shuffle=split == "train", seed=cfg.seed
        )
        for split, ds in splits.items()
    }
    train = splits["train"]
    return Prepared(
        list(train.tasks()),
        batches["train"],
        batches["val"],
        batches["test"],
        int(train.x[0].numel()),
    )


def _files(cfg: TrainConfig) -> Prepared:
    """Data declared in the ``dataset:`` section (files, columns, splits, tasks); relative
    file names are under ``data_root`` (default: the working folder)."""
    from .data.declared import parse_dataset, prepare_declared
    from .data.declared.spec import select_tasks
    from .models.inputs import TabularInput

    spec = parse_dataset(cfg.dataset, cfg.data_root or ".",
                         allow_outside_links=cfg.allow_outside_links)
    if cfg.tasks:  # a subset of the declared tasks (single-task baselines, task groups)
        spec = select_tasks(spec, cfg.tasks)
    if cfg.finetune_layers or cfg.adapter is not None:  # exclusive (TrainConfig checks)
        return _files_text(cfg, spec)
    data = prepare_declared(spec, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                            seed=cfg.seed, tasks_per_batch=cfg.tasks_per_batch,
                            temperature=cfg.task_temperature)

    def input_layer() -> nn.Module:
        return TabularInput(data.cardinalities, data.n_dense, embedding_dim=8)

    return Prepared(data.tasks, data.train, data.val, data.test, 0, input_layer,
                    input_spec={"kind": "tabular", "cardinalities": list(data.cardinalities),
                                "n_dense": data.n_dense, "embedding_dim": 8},
                    preprocessing={"data": "files", "file": PREPROCESSING},
                    artifacts={PREPROCESSING: data.preprocessor.to_json()})


def _files_text(cfg: TrainConfig, spec: Any) -> Prepared:
    """Text sources read as texts, not cached embeddings: with the encoder's top
    ``finetune_layers`` trained (the rest cached), or through a multi-task ``adapter`` on the
    frozen MiniLM (its tokens)."""
    from .data.declared.build import declared_text_tasks

    text_tasks, pre, max_length = declared_text_tasks(spec, cfg.cache_dir)
    per_batch = min(cfg.tasks_per_batch, len(text_tasks))
    data: Any
    if cfg.adapter is not None:
        from .training.adapter_text import prepare_adapter_text

        data = prepare_adapter_text(
            text_tasks, cfg.adapter, cfg.adapter_params, cfg.adapter_targets, max_length,
            cfg.batch_size, per_batch, cfg.task_temperature, cfg.seed,
        )
    else:
        from .training.finetune import prepare_finetune

        data = prepare_finetune(
            text_tasks, cfg.cache_dir, max_length, cfg.finetune_layers, cfg.batch_size,
            per_batch, cfg.task_temperature, cfg.seed,
        )
    return Prepared([t.task() for t in text_tasks], data.train, data.val, data.test, 0,
                    model_factory=data.model_factory,
                    artifacts={PREPROCESSING: pre.to_json()})


PREPROCESSING = "preprocessing.json"

DATASETS: Registry[DataSet] = Registry("data set")
DATASETS.add("multidigits", DataSet(_multidigits, lambda cfg: ("left", "right")),
             summary="MultiDigits: two-digit images generated in memory (bundled, no download)")
DATASETS.add("files", DataSet(_files, _declared_tasks), summary="files and tasks declared in "
             "the config's `dataset:` section (docs/own-data.md): your own data, or the "
             "bundled text tasks and Census-Income (configs/text.yaml, configs/census.yaml)")


def validate_config(cfg: TrainConfig) -> None:
    """Check every name and parameter of ``cfg`` against its registry, before any data is
    read: a misspelt balancer parameter is reported in a second, not after the data set has
    been built. Errors are one-line :class:`ConfigError` naming the key."""
    try:  # each message names the registry ("unknown balancer ...", "architecture 'mmoe': ...")
        DATASETS.entry(cfg.data)
        ARCHITECTURES.validate(cfg.arch, cfg.arch_params)
        BALANCERS.validate(cfg.balancer, cfg.balancer_params)
    except RegistryError as err:
        raise ConfigError(str(err)) from None
    if cfg.shard == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("shard: fsdp shards the shared part across processes: run under "
                          "torchrun with 2 or more processes (WORLD_SIZE is unset or 1)")
    if cfg.hidden is not None and "hidden" in cfg.arch_params:
        raise ConfigError("give the trunk widths once: `hidden` or arch_params.hidden, not both")
    if cfg.finetune_layers > 0 and cfg.arch != "hard_sharing":
        raise ConfigError(
            f"finetune_layers: the model is MiniLM's top layers + an MLP trunk; "
            f"arch {cfg.arch!r} is not available there"
        )
    if cfg.adapter is not None:
        from .training.adapter_text import check_adapter

        try:
            check_adapter(cfg.adapter, cfg.adapter_params, cfg.adapter_targets)
        except RegistryError as err:
            raise ConfigError(str(err)) from None
        if cfg.arch != "hard_sharing" or cfg.arch_params or cfg.hidden is not None:
            raise ConfigError("adapter: the model is MiniLM with the adapter and one linear "
                              "head per task; arch, arch_params and hidden do not apply "
                              "(leave them unset)")


def arch_params(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.arch_params``, with the config's ``hidden`` as the architecture's ``hidden``
    parameter where it has one (hard_sharing, shared_bottom, cross_stitch)."""
    params = dict(cfg.arch_params)
    if cfg.hidden is not None and "hidden" in ARCHITECTURES.entry(cfg.arch).params:
        params["hidden"] = tuple(cfg.hidden)
    return params


def build_model(cfg: TrainConfig, data: Prepared) -> MultiTaskModel:
    """The architecture ``cfg.arch`` with ``cfg.arch_params`` for the data's tasks and input."""
    if cfg.adapter is not None and data.model_factory is not None:
        return data.model_factory()  # validate_config allows no architecture option
    params = arch_params(cfg)
    if data.model_factory is not None:  # validate_config allows hard_sharing only
        params.setdefault("hidden", ARCHITECTURES.entry(cfg.arch).params["hidden"].default)
        return data.model_factory(**params)
    if data.input_layer is None:
        return make_model(cfg.arch, data.tasks, in_features=data.in_features, **params)
    return make_model(cfg.arch, data.tasks, input_layer=data.input_layer(), **params)


def model_spec(cfg: TrainConfig, data: Prepared) -> dict[str, Any]:
    """How :func:`build_model` made the model, for ``manytask.json``."""
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in arch_params(cfg).items()}
    return {"arch": cfg.arch, "arch_params": params, "in_features": data.in_features,
            "input": data.input_spec}


def _preprocessing(cfg: TrainConfig, data: Prepared) -> dict[str, Any]:
    if data.preprocessing is not None:
        return data.preprocessing
    return {"data": cfg.data, "inputs": f"flat float vectors of {data.in_features} features"}


def optimizer_options(cfg: TrainConfig) -> dict[str, Any]:
    """The optimiser's keywords (``weight_decay`` folded in), validated; reads no data."""
    params = dict(cfg.optimizer_params)
    if cfg.weight_decay is not None:
        if "weight_decay" in params:
            raise ConfigError("weight_decay is given twice (also in optimizer_params)")
        params["weight_decay"] = cfg.weight_decay
    check_optimizer(cfg.optimizer, params)
    return params


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_from_config(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return ``{"config", "val", "test"}`` with per-task metrics."""
    validate_config(cfg)
    optimizer_params = optimizer_options(cfg)
    SCHEDULES.validate(cfg.schedule, cfg.schedule_params, "schedule_params")
    resume: Resume = "if_exists" if cfg.resume_if_exists else cfg.resume
    if cfg.run_dir and os.environ.get("RANK", "0") == "0":  # before any data is read
        plan_run(cfg.run_dir, resume=resume, overwrite=cfg.overwrite, config=asdict(cfg),
                 changeable=CHANGEABLE, allow_outside_links=cfg.allow_outside_links)
    # under torchrun (WORLD_SIZE > 1): join the process group; each rank takes its shard
    device = resolve_device(cfg.device)  # under torchrun, cuda is the process's own GPU
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    ctx = init_from_env("nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.seed)
    data = DATASETS.get(cfg.data).prepare(cfg)
    if ctx is not None:
        data.train = ShardedBatches(data.train, ctx.rank, ctx.world_size)
    model = build_model(cfg, data)
    balancer = make_balancer(cfg.balancer, **cfg.balancer_params)
    callbacks: list[Callback] = []
    if cfg.early_stopping is not None:
        callbacks.append(
            EarlyStopping(cfg.early_stopping, min_delta=cfg.min_delta, monitor=cfg.monitor)
        )
    if cfg.keep_best:
        callbacks.append(BestCheckpoint(cfg.monitor))
    lrs = {role: value for role, value in (
        ("heads", cfg.head_lr), ("balancer", cfg.balancer_lr), ("encoder", cfg.finetune_lr)
    ) if value is not None}
    trainer = Trainer(
        model,
        data.tasks,
        balancer,
        optimizer=cfg.optimizer,
        optimizer_params=optimizer_params,
        lr=cfg.lr,
        lrs=lrs,
        schedule=cfg.schedule,
        schedule_params=cfg.schedule_params,
        warmup=cfg.warmup,
        schedule_interval=cfg.schedule_interval,
        schedule_steps=cfg.schedule_steps,
        clip_grad_norm=cfg.clip_grad_norm,
        mode=cfg.mode,
        head_grad=cfg.head_grad,
        run_dir=cfg.run_dir,
        log_format=cfg.log_format,
        skip_nonfinite=cfg.skip_nonfinite,
        progress=cfg.progress,
        cosine_every=cfg.cosine_every,
        log_every=cfg.log_every,
        flat_rho=cfg.flat_rho,
        tensorboard=cfg.tensorboard and cfg.run_dir is not None,
        callbacks=callbacks,
        monitor=cfg.monitor,
        accumulate=cfg.accumulate,
        accumulate_memory=cfg.accumulate_memory,
        precision=cfg.precision,
        device=device,
        allow_outside_links=cfg.allow_outside_links,
        shard=cfg.shard,
    )
    history = trainer.fit(
        data.train, cfg.epochs, val_data=data.val, resume=resume, overwrite=cfg.overwrite,
        config=asdict(cfg), changeable=CHANGEABLE,
    )
    # a last step that overflowed (or NaN weights kept under skip_nonfinite) is a failure,
    # not a table of NaN metrics at exit 0
    failed = "the trained model (lower lr, or check the data)"
    if trainer.whole_state is None:
        check_state(model.state_dict(), failed)
    else:  # sharded: gathered whole (every rank joins), checked on rank 0 for all
        trainer.whole_state.checked_model_state(failed)
    # test metrics at the best validation epoch (keep_best), else at the last
    best_epoch = trainer.restore_best()
    # sharded: the whole weights, gathered on every rank, held by rank 0
    saving = bool(cfg.run_dir) and data.model_factory is None
    whole = (trainer.whole_state.model_state()
             if trainer.whole_state is not None and saving else None)
    val = next((h["val"] for h in history if h["epoch"] == best_epoch), None)
    if val is None:
        val = history[-1]["val"] if history and best_epoch is None else trainer.evaluate(data.val)
    if cfg.run_dir and saving and (ctx is None or ctx.is_main):
        # the model for inference (the best epoch's weights when keep_best)
        save_pretrained(trainer.model, Path(cfg.run_dir) / "model", tasks=data.tasks,
                        build=model_spec(cfg, data), preprocessing=_preprocessing(cfg, data),
                        state=whole)
    if cfg.run_dir and (ctx is None or ctx.is_main) and cfg.adapter is not None:
        from .adapters import AdapterModel
        from .adapters.saving import save_adapter

        # the adapter and heads (the best epoch's weights when keep_best), PEFT's format
        # where PEFT has the method: load_adapter(folder, MiniLM, tasks) rebuilds the model
        assert isinstance(trainer.model, AdapterModel)
        save_adapter(trainer.model, Path(cfg.run_dir) / "adapter", overwrite=True)
    if cfg.run_dir and (ctx is None or ctx.is_main):
        # what predict/evaluate need to prepare new rows as training did
        for name, text in (data.artifacts or {}).items():
            atomic_write_text(Path(cfg.run_dir) / name, text)
    return {
        "config": asdict(cfg),
        "val": val,
        "test": trainer.evaluate(data.test),
        "best_epoch": best_epoch,
        "trainer": trainer,
    }


def format_results(results: dict[str, Any]) -> str:
    """A plain-text table of the test metrics, one row per task."""
    test = results["test"]
    cfg = results["config"]
    metrics = sorted({m for r in test.values() for m in r})
    header = ["task", *metrics]
    rows = [
        [task, *(f"{r[m]:.4f}" if m in r else "-" for m in metrics)] for task, r in test.items()
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [
        f"test results: data={cfg['data']} arch={cfg['arch']} balancer={cfg['balancer']} "
        f"mode={cfg['mode']} epochs={cfg['epochs']} seed={cfg['seed']}"
        + (f" (best validation epoch {results['best_epoch'] + 1})"
           if results.get("best_epoch") is not None else ""),
        line,
        "-" * len(line),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
