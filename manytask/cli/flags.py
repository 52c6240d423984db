"""The ``--flags`` of a :class:`~manytask.config.TrainConfig`: one per field, with a help text
and, for names, the choices read from the registries. Shared by ``train``, ``bench`` and
``affinity`` so that no subcommand imports another."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ConfigError, TrainConfig, config_from_mapping, load_config
from ..files import UnsafeFileError, parse_yaml

# dict-valued config keys, given on the command line as repeated --<what>-param KEY=VALUE
PARAM_FLAGS = {"balancer_params": "balancer", "arch_params": "arch",
               "optimizer_params": "optimizer", "schedule_params": "schedule",
               "adapter_params": "adapter"}

FIELD_HELP: dict[str, str] = {
    "data": "the data set",
    "tasks": "the tasks to train (default: every task of the data set)",
    "train_size": "training examples (multidigits)",
    "missing_rate": "fraction of training labels hidden per task, in [0, 1)",
    "arch": "the architecture",
    "hidden": "trunk widths of architectures with a `hidden` parameter (hard_sharing, "
    "shared_bottom, cross_stitch); default: the architecture's own",
    "balancer": "the training method",
    "mode": "per-task gradients w.r.t. the shared parameters (exact) or features (feature)",
    "head_grad": "heads get their own task's gradient (own) or the weighted one (weighted)",
    "epochs": "passes over the training data",
    "batch_size": "examples per batch",
    "lr": "learning rate",
    "seed": "random seed",
    "run_dir": "folder for checkpoints, logs and the config (default: none)",
    "resume": "continue from the last checkpoint in --run-dir",
    "log_format": "metrics log format",
    "log_every": "log every N steps",
    "skip_nonfinite": "skip a step whose loss or gradient is not finite, instead of stopping",
    "progress": "show a progress line",
    "cosine_every": "log the task-gradient cosines every N steps (default: never)",
    "flat_rho": "radius of the flat-region (SAM-style) perturbation (default: off)",
    "tensorboard": "also write TensorBoard logs into --run-dir",
    "data_root": "folder the dataset: section's file names are under (data: files)",
    "cache_dir": "folder for cached sentence embeddings (text columns)",
    "tasks_per_batch": "sources (tasks) mixed into one batch",
    "task_temperature": "temperature of the task sampler over sources (1: proportional)",
    "finetune_layers": "fine-tune MiniLM's top N layers (text sources; 0: frozen embeddings)",
    "finetune_lr": "learning rate of the fine-tuned layers (default: --lr)",
    "adapter": "text sources: train a multi-task adapter (manytask.adapters: lora, moa, "
               "align_lora, ...) on the frozen MiniLM's tokens",
    "adapter_params": "the adapter's parameters (e.g. {r: 4, route_weight: 1.0})",
    "adapter_targets": "modules the adapter adapts, as PEFT's target_modules (default: query "
                       "value)",
    "optimizer": "optimiser by name (sgd, adam, adamw, rmsprop, adagrad, or any torch.optim "
    "class); its options with --optimizer-param KEY=VALUE",
    "weight_decay": "weight decay (not applied to a method's own parameters)",
    "head_lr": "learning rate of the heads (default: --lr)",
    "balancer_lr": "learning rate of the method's own parameters (default: --lr)",
    "clip_grad_norm": "clip the gradient's global norm to this value (default: no clipping)",
    "schedule": "learning-rate schedule after the warm-up (constant, cosine, linear, step, "
    "plateau); its options with --schedule-param KEY=VALUE",
    "warmup": "linear warm-up length, in steps (or epochs with --schedule-interval epoch)",
    "schedule_interval": "step the schedule every optimiser step or every epoch",
    "schedule_steps": "the schedule's length (default: the whole run)",
    "accumulate": "micro-batches per optimiser step (exactly one batch N times larger)",
    "accumulate_memory": "free: free each micro-batch's graph (one extra forward for loss-level "
    "methods and feature mode); graphs: keep all N (the large batch's memory)",
    "precision": "fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler)",
    "device": "cpu, cuda, cuda:N, mps or auto",
    "shard": "under torchrun, shard the model's shared part across the processes with FSDP2 "
    "(checkpoints and the saved model stay whole)",
    "resume_if_exists": "resume when --run-dir holds a checkpoint, else start (job schedulers)",
    "overwrite": "replace the run in --run-dir (only the run's own files are removed)",
    "allow_outside_links": "follow links in input folders (the run folder, data_root, a "
    "datasets folder) that lead outside them (refused by default)",
    "monitor": "validation score for early stopping and the best checkpoint: mean (each "
    "task's main metric, by direction), loss, or TASK/METRIC",
    "early_stopping": "stop after this many epochs without improvement (default: never)",
    "min_delta": "smallest improvement of the monitored score that counts",
    "keep_best": "keep the best epoch's checkpoint and take the test metrics there",
}


LINKS_FLAG = "--allow-outside-links"
LINKS_HELP = "follow links in input folders that lead outside them (refused by default)"


def add_links_flag(parser: argparse.ArgumentParser, help_text: str = LINKS_HELP) -> None:
    """``--allow-outside-links``, for the commands that read files from folders and have no
    TrainConfig (``merge``, ``predict``, ``evaluate``, ``report``); ``train`` and ``bench``
    get it as the config key ``allow_outside_links``."""
    parser.add_argument(LINKS_FLAG, dest="allow_outside_links", action="store_true",
                        help=help_text)


def registry_choices() -> dict[str, str]:
    """``{field: "a|b|c"}`` for the config fields whose value is a registered name."""
    from ..balancers.registry import BALANCERS
    from ..models import ARCHITECTURES
    from ..run import DATASETS

    # ", " and not "|": argparse wraps help on spaces and would cut a long "a|b|c" anywhere
    return {"data": ", ".join(DATASETS.names()), "arch": ", ".join(ARCHITECTURES.names()),
            "balancer": ", ".join(BALANCERS.names())}


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per :class:`TrainConfig` field; unset flags leave the config alone."""
    hints = typing.get_type_hints(TrainConfig)
    names = registry_choices()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = strip_none(hints[f.name])
        default = getattr(defaults, f.name)
        text = FIELD_HELP.get(f.name, f.name.replace("_", " "))
        if f.name in names:
            text += f": {names[f.name]}"
        if typing.get_origin(hint) is typing.Literal:
            text += ": " + ", ".join(str(a) for a in typing.get_args(hint))
        help_text = f"{text} (default: {default})" if default is not None else text
        if f.name in PARAM_FLAGS:
            what = PARAM_FLAGS[f.name]
            parser.add_argument(
                f"--{what}-param", dest=f.name, action="append", metavar="KEY=VALUE",
                help=f"a {what} parameter, repeatable, value read as YAML "
                + ("(docs/adapters.md lists them)" if what == "adapter" else
                   f"(`manytask {what + 's' if what == 'balancer' else 'architectures'}` "
                   "lists them)"),
            )
        elif hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif typing.get_origin(hint) is list:
            (inner,) = typing.get_args(hint)
            parser.add_argument(flag, dest=f.name, nargs="+", type=inner, help=help_text)
        elif hint in (int, float):
            parser.add_argument(flag, dest=f.name, type=_number(hint), help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=str, help=help_text)


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def strip_none(hint: Any) -> Any:
    """``int | None`` -> ``int``: a flag cannot say None, it is simply not given."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def flag_values(args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The config keys given as flags (``--x-param KEY=VALUE`` collected into a mapping)."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = None if f.name in skip else getattr(args, f.name, None)
        if value is None:
            continue
        if f.name in PARAM_FLAGS:
            params = {}
            for item in value:
                key, sep, raw = item.partition("=")
                if not sep or not key:
                    raise ConfigError(
                        f"--{PARAM_FLAGS[f.name]}-param expects KEY=VALUE, got {item!r}"
                    )
                try:
                    params[key] = parse_yaml(raw, where=f"--{PARAM_FLAGS[f.name]}-param {key}")
                except UnsafeFileError as err:  # not YAML, or a bomb: one line either way
                    raise ConfigError(str(err)) from None
            value = params
        values[f.name] = value
    return values


def config_from_args(args: argparse.Namespace, skip: Sequence[str] = ()) -> TrainConfig:
    """The config file (``--config``) with the flags on top, validated."""
    flags = flag_values(args, skip)
    if getattr(args, "config", None):
        return load_config(args.config, flags)
    return config_from_mapping(flags, source="command line")
