"""Run a training configuration end to end: data, model, Trainer, test metrics."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .balancers import make_balancer
from .config import ConfigError, TrainConfig
from .models import ARCHITECTURES as MODEL_REGISTRY
from .models import HardSharing, MultiTaskModel, make_model, shared_bottom
from .tasks import Task
from .training import Trainer
from .training.distributed import ShardedBatches, init_from_env


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
    # text with fine-tuned top layers: builds the model (its shared part is MiniLM's top layers)
    model_factory: Callable[..., MultiTaskModel] | None = None
    # files written into the run folder with the config (the fitted preprocessing)
    artifacts: dict[str, str] | None = None


def task_names(cfg: TrainConfig) -> tuple[str, ...]:
    """The tasks a run trains: ``cfg.tasks``, or the data set's default tasks."""
    if cfg.tasks:
        return tuple(cfg.tasks)
    if cfg.data == "files":
        from .data.declared import parse_dataset

        return tuple(t.name for t in parse_dataset(cfg.dataset, cfg.data_root or ".").tasks)
    if cfg.data == "text":
        from .data.text import TEXT_TASKS

        return tuple(TEXT_TASKS)
    if cfg.data == "census":
        from .data.census import GROUPS

        return GROUPS[1 if cfg.census_group == 1 else 2]
    return ("left", "right")  # MultiDigits


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


def _text(cfg: TrainConfig) -> Prepared:
    from .data.text import TEXT_TASKS, MixedTaskBatches, load_text_task, stacked_batches

    names = task_names(cfg)
    unknown = sorted(set(names) - set(TEXT_TASKS))
    if unknown:
        raise ConfigError(f"unknown text task(s) {unknown}; available: {list(TEXT_TASKS)}")
    if cfg.data_root is None or not Path(cfg.data_root).is_dir():
        raise ConfigError(f"data_root {cfg.data_root!r} is not a folder of text tasks")
    text_tasks = [
        load_text_task(cfg.data_root, n, fine=cfg.trec_fine).capped(
            cfg.train_cap, cfg.val_cap, cfg.test_cap
        )
        for n in names
    ]
    tasks = [t.task() for t in text_tasks]
    per_batch = min(cfg.tasks_per_batch, len(text_tasks))
    if cfg.finetune_layers > 0:
        from .data.encoder_top import prepare_finetune

        ft = prepare_finetune(
            text_tasks, cfg.cache_dir, cfg.max_length, cfg.finetune_layers, cfg.batch_size,
            per_batch, cfg.task_temperature, cfg.seed,
        )
        return Prepared(tasks, ft.train, ft.val, ft.test, 0, model_factory=ft.model_factory)
    from .data.encoders import text_embeddings

    embeddings = text_embeddings(text_tasks, cfg.cache_dir, cfg.max_length)
    labels = {s: {t.name: t.split(s).labels for t in text_tasks} for s in ("train", "val", "test")}
    feats = {s: {t.name: embeddings[t.name][s] for t in text_tasks} for s in labels}
    train = MixedTaskBatches(
        feats["train"],
        labels["train"],
        cfg.batch_size,
        tasks_per_batch=per_batch,
        temperature=cfg.task_temperature,
        seed=cfg.seed,
    )
    return Prepared(
        tasks,
        train,
        stacked_batches(feats["val"], labels["val"], cfg.batch_size),
        stacked_batches(feats["test"], labels["test"], cfg.batch_size),
        int(feats["train"][names[0]].shape[1]),
    )


def _census(cfg: TrainConfig) -> Prepared:
    """Census-Income (KDD): the fixed-seed split of :func:`manytask.data.census.load_census`
    (seed 0 whatever the training seed, so every run is scored on the same test rows)."""
    from .data import TensorBatches
    from .data.census import GROUPS, load_census
    from .data.tabular import TabularInput

    group: Literal[1, 2] = 1 if cfg.census_group == 1 else 2
    names = task_names(cfg)
    unknown = sorted(set(names) - set(GROUPS[group]))
    if unknown:
        raise ConfigError(f"census group {group} has no task(s) {unknown}: {list(GROUPS[group])}")
    if cfg.data_root is None or not Path(cfg.data_root).exists():
        raise ConfigError(f"data_root {cfg.data_root!r} does not exist")
    census = load_census(cfg.data_root, group)

    def batches(split: Any, shuffle: bool) -> TensorBatches:
        x = {"categorical": split.categorical, "dense": split.dense}
        targets = {t: split.targets[t] for t in names}
        return TensorBatches(x, targets, cfg.batch_size, shuffle=shuffle, seed=cfg.seed)

    def input_layer() -> nn.Module:
        return TabularInput(census.cardinalities, census.n_dense, embedding_dim=8)

    return Prepared(
        [t for t in census.tasks if t.name in names],
        batches(census.train, True),
        batches(census.val, False),
        batches(census.test, False),
        0,
        input_layer,
    )


def _files(cfg: TrainConfig) -> Prepared:
    """Data declared in the ``dataset:`` section (files, columns, splits, tasks); relative
    file names are under ``data_root`` (default: the working folder)."""
    from .data.declared import parse_dataset, prepare_declared
    from .data.declared.spec import select_tasks
    from .data.tabular import TabularInput

    spec = parse_dataset(cfg.dataset, cfg.data_root or ".")
    if cfg.tasks:  # a subset of the declared tasks (single-task baselines, task groups)
        spec = select_tasks(spec, cfg.tasks)
    if cfg.finetune_layers:
        raise ConfigError("finetune_layers: not available for data: files (frozen MiniLM "
                          "embeddings only)")
    data = prepare_declared(spec, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                            seed=cfg.seed, tasks_per_batch=cfg.tasks_per_batch,
                            temperature=cfg.task_temperature)

    def input_layer() -> nn.Module:
        return TabularInput(data.cardinalities, data.n_dense, embedding_dim=8)

    return Prepared(data.tasks, data.train, data.val, data.test, 0, input_layer,
                    artifacts={PREPROCESSING: data.preprocessor.to_json()})


PREPROCESSING = "preprocessing.json"

DATASETS: dict[str, Callable[[TrainConfig], Prepared]] = {
    "files": _files,
    "multidigits": _multidigits,
    "text": _text,
    "census": _census,
}

# "hard_sharing" is the plain trunk of `hidden` widths; the others come from the model registry
ARCHITECTURE_NAMES = ("hard_sharing", *sorted(MODEL_REGISTRY))


def build_model(cfg: TrainConfig, data: Prepared) -> MultiTaskModel:
    """The architecture ``cfg.arch`` with ``cfg.arch_params`` for the data's tasks and input."""
    params = dict(cfg.arch_params)
    try:
        if data.model_factory is not None:
            if cfg.arch != "hard_sharing":
                raise ConfigError(
                    f"finetune_layers: the model is MiniLM's top layers + an MLP trunk; "
                    f"arch {cfg.arch!r} is not available there"
                )
            return data.model_factory(hidden=tuple(cfg.hidden), **params)
        if cfg.arch == "hard_sharing":
            if data.input_layer is None:
                return HardSharing(data.tasks, data.in_features, hidden=cfg.hidden, **params)
            return shared_bottom(
                data.tasks, input_layer=data.input_layer(), hidden=cfg.hidden, **params
            )
        if data.input_layer is None:
            return make_model(cfg.arch, data.tasks, in_features=data.in_features, **params)
        return make_model(cfg.arch, data.tasks, input_layer=data.input_layer(), **params)
    except TypeError as err:  # an unknown keyword in arch_params
        raise ConfigError(f"arch {cfg.arch!r}: bad arch_params {params}: {err}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_from_config(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; return ``{"config", "val", "test"}`` with per-task metrics."""
    if cfg.data not in DATASETS:
        raise ConfigError(f"unknown data {cfg.data!r}; available: {sorted(DATASETS)}")
    if cfg.arch not in ARCHITECTURE_NAMES:
        raise ConfigError(f"unknown arch {cfg.arch!r}; available: {list(ARCHITECTURE_NAMES)}")
    # under torchrun (WORLD_SIZE > 1): join the process group; each rank takes its shard
    ctx = init_from_env()
    seed_everything(cfg.seed)
    data = DATASETS[cfg.data](cfg)
    if ctx is not None:
        data.train = ShardedBatches(data.train, ctx.rank, ctx.world_size)
    model = build_model(cfg, data)
    balancer = make_balancer(cfg.balancer, **cfg.balancer_params)
    layered = getattr(model, "optimizer_factory", None)  # fine-tuned layers: their own lr
    trainer = Trainer(
        model,
        data.tasks,
        balancer,
        optimizer=layered(cfg.lr, cfg.finetune_lr or cfg.lr) if layered else None,
        lr=cfg.lr,
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
    )
    if cfg.run_dir and (ctx is None or ctx.is_main):
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / "config.yaml").write_text(_yaml(asdict(cfg)))
        for name, text in (data.artifacts or {}).items():
            _write_atomic(Path(cfg.run_dir) / name, text)
    history = trainer.fit(data.train, cfg.epochs, val_data=data.val, resume=cfg.resume)
    return {
        "config": asdict(cfg),
        "val": history[-1]["val"] if history else trainer.evaluate(data.val),
        "test": trainer.evaluate(data.test),
        "trainer": trainer,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _yaml(values: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(values, sort_keys=False))


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
        f"mode={cfg['mode']} epochs={cfg['epochs']} seed={cfg['seed']}",
        line,
        "-" * len(line),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
